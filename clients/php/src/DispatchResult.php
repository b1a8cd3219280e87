<?php

declare(strict_types=1);

namespace OperationRuns;

/** The service's reply to a dispatch (reply.json, "dispatch accepted"). */
final class DispatchResult
{
    public function __construct(
        /** The run: new, or the active run of the same identity. */
        public readonly int $runId,
        /** True when an active run of the same identity already existed (no new run). */
        public readonly bool $deduplicated,
        /** 64 lowercase hex characters. */
        public readonly string $runIdentityHash,
        /** queued | running | completed. */
        public readonly string $status,
        /** The command id the dispatch was sent with. */
        public readonly string $commandId,
    ) {
    }

    /** @param array<string, mixed> $reply */
    public static function fromReply(array $reply, string $commandId): self
    {
        return new self(
            (int) $reply['run_id'],
            (bool) $reply['deduplicated'],
            (string) $reply['run_identity_hash'],
            (string) $reply['status'],
            $commandId,
        );
    }
}
