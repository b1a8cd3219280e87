<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/** `operation_run.completed`: the run completed (`$run['outcome']`). */
final class OperationRunCompleted extends OperationRunEvent
{
}
