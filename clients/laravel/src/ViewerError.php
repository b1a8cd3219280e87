<?php

declare(strict_types=1);

namespace OperationRuns\Laravel;

/**
 * The run viewer's API refused a read or could not be reached: its message is the viewer's
 * error code and message (or why no answer came), never a token or a password.
 */
final class ViewerError extends \RuntimeException
{
    public function __construct(string $message, public readonly ?string $errorCode = null, public readonly int $status = 0)
    {
        parent::__construct($message);
    }
}
