<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Console;

use Illuminate\Console\Command;
use Illuminate\Contracts\Events\Dispatcher;
use OperationRuns\EventSubscriber;
use OperationRuns\Laravel\Events\OperationRunEvent;
use OperationRuns\Laravel\OperationRunsServiceProvider;

/**
 * `php artisan operation-runs:listen`: the service's CloudEvents as Laravel events
 * ({@see OperationRunEvent::CLASSES}: OperationRunQueued, OperationRunStarted,
 * OperationRunProgressed, OperationRunCompleted, OperationRunCancelRequested,
 * OperationRunRetried), dispatched through the application's event dispatcher, so listeners,
 * queued listeners and broadcasting work as for the app's own events.
 *
 * An event is acked once its listeners returned (when the next one is asked for); a listener that
 * throws ends the command with the event unacked, and the queue delivers it again. Delivery is at
 * least once: dedupe on the event's `$id`. A type this package does not know is skipped.
 */
final class ListenCommand extends Command
{
    /** @var string */
    protected $signature = 'operation-runs:listen
        {--queue= : The durable queue to read (default: config operation-runs.events.queue; none: an exclusive one)}
        {--idle-timeout= : Stop after this many seconds without an event}';

    /** @var string */
    protected $description = 'Dispatch the operation-runs events as Laravel events (OperationRunQueued, OperationRunCompleted, …)';

    public function handle(Dispatcher $events): int
    {
        $config = $this->laravel['config'][OperationRunsServiceProvider::CONFIG_KEY];
        $queue = ($this->option('queue') ?? ($config['events']['queue'] ?? null)) ?: null;
        $subscriber = new EventSubscriber(
            $config['amqp_url'],
            (string) $config['namespace'],
            $queue,
            connectionName: $config['connection_name'] . ' listener',
        );
        $stopping = false;
        if (function_exists('pcntl_async_signals')) {
            pcntl_async_signals(true);
            pcntl_signal(SIGTERM, static function () use (&$stopping): void {
                $stopping = true;
            });
            pcntl_signal(SIGINT, static function () use (&$stopping): void {
                $stopping = true;
            });
        }
        $this->info("operation-runs: listening on {$subscriber->queueName()}");
        $dispatched = 0;
        try {
            $idle = $this->option('idle-timeout') !== null ? (float) $this->option('idle-timeout') : null;
            foreach ($subscriber->events($idle) as $cloudEvent) {
                $event = OperationRunEvent::fromCloudEvent($cloudEvent);
                if ($event !== null) {
                    $events->dispatch($event);
                    $dispatched++;
                }
                if ($stopping) {
                    // The event in hand is not acked: it comes again (at least once).
                    break;
                }
            }
        } finally {
            $subscriber->close();
        }
        $this->info("operation-runs: {$dispatched} event(s) dispatched");
        return self::SUCCESS;
    }
}
