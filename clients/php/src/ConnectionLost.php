<?php

declare(strict_types=1);

namespace OperationRuns;

/**
 * An {@see EventSubscriber} could not subscribe, or its subscription ended: no node of the URL
 * list answered, the connection was lost again before an event came on the fresh one, or the
 * queue was the exclusive one of the subscriber (it went with the connection). Events not acked
 * are delivered again to a named queue's next subscriber. The message never shows a password.
 */
final class ConnectionLost extends \RuntimeException
{
}
