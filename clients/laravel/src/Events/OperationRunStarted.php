<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/** `operation_run.started`: the run started (status running). */
final class OperationRunStarted extends OperationRunEvent
{
}
