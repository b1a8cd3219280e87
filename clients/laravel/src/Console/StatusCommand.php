<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Console;

use Illuminate\Console\Command;
use OperationRuns\Laravel\ViewerClient;
use OperationRuns\Laravel\ViewerError;

/**
 * `php artisan operation-runs:status {run} --workspace=W [--tenant=T]… [--json]`: the run as the
 * viewer's API shows it (`GET /v1/runs/{id}`, read with a token of that one run minted from the
 * configured `api_secret`): type, status, outcome, progress, counts and failures by code, or the
 * detail as JSON. A run outside the workspace and tenants given is "not found" (exit 1). The
 * token is never printed.
 */
final class StatusCommand extends Command
{
    /** @var string */
    protected $signature = 'operation-runs:status
        {run : The run id}
        {--workspace= : The run\'s workspace id}
        {--tenant=* : The run\'s tenant id (none: the whole workspace)}
        {--json : Print the viewer\'s detail of the run as JSON}';

    /** @var string */
    protected $description = 'Show a run\'s status, progress and failures (from the run viewer)';

    public function handle(ViewerClient $viewer): int
    {
        $run = (string) $this->argument('run');
        if (!ctype_digit($run) || !ctype_digit((string) $this->option('workspace'))) {
            $this->error('a run id and --workspace (a workspace id) are required');
            return self::FAILURE;
        }
        $tenants = array_map('intval', (array) $this->option('tenant'));
        try {
            $detail = $viewer->run((int) $run, (int) $this->option('workspace'), $tenants === [] ? null : $tenants);
        } catch (ViewerError $e) {
            $this->error($e->getMessage());
            return self::FAILURE;
        }
        if ($this->option('json')) {
            $this->line(json_encode($detail, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_PRETTY_PRINT));
            return self::SUCCESS;
        }
        $this->line(sprintf('run #%d %s (%s): %s, %s', $detail['id'], $detail['type'], $detail['label'] ?? $detail['type'], $detail['status'], $detail['outcome']));
        $progress = $detail['progress'] ?? null;
        if (is_array($progress) && isset($progress['total'])) {
            $percent = isset($progress['percent']) ? sprintf(' (%s%%)', $progress['percent']) : '';
            $this->line(sprintf('progress: %d/%d%s', $progress['processed'] ?? 0, $progress['total'], $percent));
        }
        $counts = $detail['summary_counts'] ?? [];
        if ($counts !== []) {
            $this->line('counts: ' . implode(', ', array_map(static fn ($k, $v): string => "{$k} {$v}", array_keys($counts), $counts)));
        }
        foreach ($detail['failures_by_code'] ?? [] as $failure) {
            $this->line("failures: {$failure['code']} × {$failure['count']}");
        }
        if (($detail['stalled'] ?? false) === true) {
            $this->warn('stalled: running, and idle for longer than the type\'s expected duration');
        }
        return self::SUCCESS;
    }
}
