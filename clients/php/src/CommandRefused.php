<?php

declare(strict_types=1);

namespace OperationRuns;

/**
 * The service refused the command: it was dead-lettered with a reason code (docs/contract.md, "Dead letters
 * and reason codes"), e.g. `unknown_type`, `missing_identity_key`, `run_not_found`. Retrying the
 * same command cannot succeed.
 */
final class CommandRefused extends \RuntimeException
{
    public function __construct(private readonly string $errorCode, string $message)
    {
        parent::__construct("{$errorCode}: {$message}");
    }

    /** The stable reason code, e.g. `missing_identity_key`. */
    public function getErrorCode(): string
    {
        return $this->errorCode;
    }
}
