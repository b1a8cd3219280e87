<?php

declare(strict_types=1);

namespace OperationRuns;

/** @internal No URL of the list gave a connection; the message is redacted. */
final class NoNodeAnswered extends \RuntimeException
{
}
