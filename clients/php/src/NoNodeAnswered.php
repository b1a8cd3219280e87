<?php

declare(strict_types=1);

namespace OperationRuns;

/**
 * No URL of the list gave a connection ({@see AmqpUrl::connect()}); the message names each URL
 * with its password redacted and why it failed. The client's calls turn it into
 * {@see CommandNotAnswered} `connection_lost` or {@see ConnectionLost}.
 */
final class NoNodeAnswered extends \RuntimeException
{
}
