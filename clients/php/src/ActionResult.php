<?php

declare(strict_types=1);

namespace OperationRuns;

/**
 * The service's answer to an operator action (`cancel_run`, `retry_run`, `fail_run`; reply.json,
 * "action answered"): the same shape from the broker, the API and the CLI.
 */
final class ActionResult
{
    /** The action took effect: a queued run cancelled, a run failed, a retry dispatched. */
    public const DONE = 'done';
    /** A running run's executor was asked to stop; it completes the run (or the reaper does). */
    public const REQUESTED = 'requested';
    /** Nothing to do: already so (a second cancel, a run already failed). */
    public const UNCHANGED = 'unchanged';
    /** Not allowed in the run's state (e.g. a completion is never overwritten); see `$error`. */
    public const REFUSED = 'refused';

    public function __construct(
        public readonly int $runId,
        /** cancel | retry | fail. */
        public readonly string $action,
        /** done | requested | unchanged | refused (the constants above). */
        public readonly string $result,
        /** A retry's run: new, or the active run of the same identity. */
        public readonly ?int $newRunId,
        /** A retry's: true when `$newRunId` is an active run that already held the identity. */
        public readonly ?bool $deduplicated,
        /** Why it was unchanged or refused. */
        public readonly ?string $error,
        /** The command id the action was sent with. */
        public readonly string $commandId,
    ) {
    }

    /** @param array<string, mixed> $reply */
    public static function fromReply(array $reply, string $commandId): self
    {
        return new self(
            (int) $reply['run_id'],
            (string) $reply['action'],
            (string) $reply['result'],
            isset($reply['new_run_id']) ? (int) $reply['new_run_id'] : null,
            isset($reply['deduplicated']) ? (bool) $reply['deduplicated'] : null,
            isset($reply['error']) ? (string) $reply['error'] : null,
            $commandId,
        );
    }
}
