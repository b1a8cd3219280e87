<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/** `operation_run.cancel_requested`: a cancel was asked (`data.action`). */
final class OperationRunCancelRequested extends OperationRunEvent
{
}
