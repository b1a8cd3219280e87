<?php

declare(strict_types=1);

namespace OperationRuns;

/**
 * No verdict from the service: the broker could not route the command (the topology is not
 * declared: `isUnroutable()`), refused it (nack), no reply came within the timeout, or the
 * connection was lost and the one resend on a fresh connection failed too, or no node of the URL
 * list answered (`CONNECTION_LOST`). The message never shows a password. Unlike
 * {@see CommandRefused}, the command may still be applied later: retry with the same command id,
 * which the service applies at most once.
 */
final class CommandNotAnswered extends \RuntimeException
{
    public const UNROUTABLE = 'unroutable';
    public const NACKED = 'nacked';
    public const TIMEOUT = 'timeout';
    public const CONNECTION_LOST = 'connection_lost';

    public function __construct(
        private readonly string $reason,
        private readonly string $commandId,
        string $message,
    ) {
        parent::__construct($message);
    }

    /** One of UNROUTABLE, NACKED, TIMEOUT, CONNECTION_LOST. */
    public function getReason(): string
    {
        return $this->reason;
    }

    /** The command id to retry with. */
    public function getCommandId(): string
    {
        return $this->commandId;
    }

    public function isUnroutable(): bool
    {
        return $this->reason === self::UNROUTABLE;
    }
}
