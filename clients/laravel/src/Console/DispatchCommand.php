<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Console;

use Illuminate\Console\Command;
use OperationRuns\CommandRefused;
use OperationRuns\OperationRunService;

/**
 * `php artisan operation-runs:dispatch {type} --workspace=W [--tenant=T] [--context=JSON]`:
 * dispatches through the container's {@see OperationRunService} and prints the reply as JSON
 * (`run_id`, `status`, `run_identity_hash`, `deduplicated`, `command_id`). A refusal prints its
 * code and exits 1.
 */
final class DispatchCommand extends Command
{
    /** @var string */
    protected $signature = 'operation-runs:dispatch
        {type : The run type, e.g. inventory.sync}
        {--workspace= : The workspace id}
        {--tenant= : The tenant id (none: a workspace-scoped run)}
        {--context={} : The context as a JSON object (the type\'s identity keys are required)}
        {--user= : The initiating user id}
        {--initiator= : The initiator\'s name}';

    /** @var string */
    protected $description = 'Dispatch a run and print the service\'s reply';

    public function handle(OperationRunService $service): int
    {
        if (!ctype_digit((string) $this->option('workspace'))) {
            $this->error('--workspace is required (a workspace id)');
            return self::FAILURE;
        }
        $context = json_decode((string) $this->option('context'), true);
        if (!is_array($context) || ($context !== [] && array_is_list($context))) {
            $this->error('--context must be a JSON object');
            return self::FAILURE;
        }
        $options = array_filter([
            'userId' => $this->option('user') !== null ? (int) $this->option('user') : null,
            'initiatorName' => $this->option('initiator'),
        ], static fn ($value): bool => $value !== null);
        $tenant = $this->option('tenant');
        try {
            $run = $service->dispatchOrFail(
                (string) $this->argument('type'),
                (int) $this->option('workspace'),
                $tenant !== null ? (int) $tenant : null,
                $context,
                $options,
            );
        } catch (CommandRefused $e) {
            $this->error('refused: ' . $e->getMessage());
            return self::FAILURE;
        }
        $this->line(json_encode([
            'run_id' => $run->runId,
            'status' => $run->status,
            'run_identity_hash' => $run->runIdentityHash,
            'deduplicated' => $run->deduplicated,
            'command_id' => $run->commandId,
        ], JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES));
        return self::SUCCESS;
    }
}
