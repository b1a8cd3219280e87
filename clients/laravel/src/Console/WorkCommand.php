<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Console;

use Illuminate\Console\Command;
use OperationRuns\Laravel\OperationRunsServiceProvider;
use OperationRuns\RunHandle;
use OperationRuns\Worker;

/**
 * `php artisan operation-runs:work [--type=…]`: the client's {@see Worker} for the types of
 * config `operation-runs.executors` (type ⇒ handler class). Each job's handler is made by the
 * container (its constructor dependencies injected) and called as `handle(RunHandle $run)`
 * (method injection for further parameters) or `__invoke(RunHandle $run)`; it returns the
 * outcome or null (see {@see RunHandle}). The Worker acks a job only after the service answered
 * its completion, and a redelivered job of a completed run never runs its handler again.
 *
 * SIGTERM and SIGINT (with ext-pcntl) stop it after the job in hand.
 */
final class WorkCommand extends Command
{
    /** @var string */
    protected $signature = 'operation-runs:work
        {--type=* : Execute only these of the configured types}
        {--name= : The worker name: its job queue is <namespace>.worker.<name> (default: config operation-runs.worker.name)}
        {--max-jobs= : Stop after settling this many jobs}
        {--idle-timeout= : Stop after this many seconds without a job}';

    /** @var string */
    protected $description = 'Execute the jobs of the run types mapped to handler classes in config operation-runs.executors';

    public function handle(): int
    {
        $config = $this->laravel['config'][OperationRunsServiceProvider::CONFIG_KEY];
        /** @var array<string, class-string> $executors */
        $executors = (array) ($config['executors'] ?? []);
        $asked = array_values(array_unique((array) $this->option('type')));
        $unknown = array_diff($asked, array_keys($executors));
        if ($unknown !== []) {
            $this->error('no executor is configured for ' . implode(', ', $unknown) . ' (config operation-runs.executors)');
            return self::FAILURE;
        }
        $types = $asked !== [] ? $asked : array_keys($executors);
        if ($types === []) {
            $this->error('no executors are configured (config operation-runs.executors: type => handler class)');
            return self::FAILURE;
        }
        sort($types);
        $name = self::workerName($this->option('name') ?? (string) $config['worker']['name'], $asked === [] ? [] : $types);

        $worker = new Worker(
            $config['amqp_url'],
            (string) $config['namespace'],
            $name,
            $types,
            null,
            (float) $config['timeouts']['reply'],
            $config['connection_name'] . ' worker',
        );
        if (function_exists('pcntl_async_signals')) {
            pcntl_async_signals(true);
            pcntl_signal(SIGTERM, static fn () => $worker->stop());
            pcntl_signal(SIGINT, static fn () => $worker->stop());
        }
        $this->info("operation-runs: executing " . implode(', ', $types) . " from {$worker->queue()}");
        try {
            $settled = $worker->run(
                fn (RunHandle $run): ?string => $this->runHandler($executors[$run->type], $run),
                $this->option('max-jobs') !== null ? (int) $this->option('max-jobs') : null,
                $this->option('idle-timeout') !== null ? (float) $this->option('idle-timeout') : null,
            );
        } finally {
            $worker->close();
        }
        $this->info("operation-runs: {$settled} job(s) settled");
        return self::SUCCESS;
    }

    /**
     * The worker name of a process: `$base`, or for one started with --type `$base.<t1>+<t2>…`, so
     * that processes of different type sets never share a queue (a job of a type a process has no
     * handler for would fail there).
     *
     * @param list<string> $types
     */
    public static function workerName(string $base, array $types): string
    {
        return $types === [] ? $base : $base . '.' . implode('+', $types);
    }

    /** Makes the type's handler and runs it for `$run`. */
    private function runHandler(string $class, RunHandle $run): ?string
    {
        $handler = $this->laravel->make($class);
        $outcome = method_exists($handler, 'handle')
            ? $this->laravel->call([$handler, 'handle'], ['run' => $run])
            : $handler($run);
        return $outcome === null ? null : (string) $outcome;
    }
}
