<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Facades;

use Illuminate\Support\Facades\Facade;
use OperationRuns\ActionResult;
use OperationRuns\DispatchResult;
use OperationRuns\OperationRunService;

/**
 * The container's {@see OperationRunService} (one per process). Refusals are
 * {@see \OperationRuns\CommandRefused} (`getErrorCode()`), unanswered commands
 * {@see \OperationRuns\CommandNotAnswered}.
 *
 * @method static DispatchResult dispatchOrFail(string $type, int $workspaceId, ?int $tenantId, array $context, array $options = [])
 * @method static array updateRun(int $runId, int $workspaceId, ?int $tenantId, array $changes, array $options = [])
 * @method static array appendFailures(int $runId, int $workspaceId, ?int $tenantId, array $failures, array $options = [])
 * @method static array incrementSummaryCounts(int $runId, int $workspaceId, ?int $tenantId, array $counts, array $options = [])
 * @method static ActionResult cancel(int $runId, int $workspaceId, ?int $tenantId, ?string $reason = null, array $options = [])
 * @method static ActionResult retry(int $runId, int $workspaceId, ?int $tenantId, ?string $reason = null, array $options = [])
 * @method static ActionResult fail(int $runId, int $workspaceId, ?int $tenantId, string $reason, array $options = [])
 * @method static string viewUrl(int $runId, int $workspaceId, ?array $tenantIds = null, int $ttlSeconds = 3600)
 * @method static void close()
 *
 * @see OperationRunService
 */
final class OperationRuns extends Facade
{
    protected static function getFacadeAccessor(): string
    {
        return OperationRunService::class;
    }
}
