<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/**
 * An event of the service (a CloudEvent of `N.events`, topology/schemas/event.json) as a Laravel
 * event, dispatched by `php artisan operation-runs:listen`. Delivery is at least once: dedupe on
 * `$id`; order per run by `$sequence`.
 */
abstract class OperationRunEvent
{
    /** CloudEvent type ⇒ the event class dispatched for it. */
    public const CLASSES = [
        'operation_run.queued' => OperationRunQueued::class,
        'operation_run.started' => OperationRunStarted::class,
        'operation_run.progressed' => OperationRunProgressed::class,
        'operation_run.completed' => OperationRunCompleted::class,
        'operation_run.cancel_requested' => OperationRunCancelRequested::class,
        'operation_run.retried' => OperationRunRetried::class,
    ];

    /** The event id (dedupe on it). */
    public readonly string $id;
    /** Position of the event among its run's, from 1 without gaps. */
    public readonly int $sequence;
    /** @var array<string, mixed> the whole run row after the change (`id`, `status`, `outcome`, `summary_counts`, …) */
    public readonly array $run;

    /** @param array<string, mixed> $cloudEvent the CloudEvent as received */
    final public function __construct(public readonly array $cloudEvent)
    {
        $this->id = (string) ($cloudEvent['id'] ?? '');
        $this->sequence = (int) ($cloudEvent['data']['sequence'] ?? 0);
        $this->run = (array) ($cloudEvent['data']['run'] ?? []);
    }

    /**
     * The Laravel event of `$cloudEvent`; null for a type this package does not know (a newer
     * service's), which a listener skips.
     *
     * @param array<string, mixed> $cloudEvent
     */
    public static function fromCloudEvent(array $cloudEvent): ?self
    {
        $class = self::CLASSES[$cloudEvent['type'] ?? ''] ?? null;
        return $class === null ? null : new $class($cloudEvent);
    }

    /** The run's id. */
    public function runId(): int
    {
        return (int) ($this->run['id'] ?? 0);
    }
}
