<?php

declare(strict_types=1);

namespace OperationRuns\Laravel;

use OperationRuns\OperationRunService;

/**
 * Reads from the run viewer's JSON API (`GET /v1/runs/{id}`) with a token of the one run read,
 * minted by {@see OperationRunService::viewToken()} from the configured `viewer_url` and
 * `api_secret` for a minute. PHP's own HTTP stream (no HTTP package needed).
 */
final class ViewerClient
{
    /** Seconds the minted token lives: one read. */
    private const TOKEN_TTL = 60;

    public function __construct(private readonly OperationRunService $service, private readonly float $timeout)
    {
    }

    /**
     * The viewer's detail of run `$runId` (the shape of an event's `data.run` plus `label`,
     * `progress`, `failures_by_code`, …; docs/viewer.md).
     *
     * @param list<int>|null $tenantIds the run's tenants as the platform knows them (null: the workspace)
     * @return array<string, mixed>
     * @throws ViewerError when the viewer refuses (`not_found` for a run outside the scope) or does not answer
     */
    public function run(int $runId, int $workspaceId, ?array $tenantIds = null): array
    {
        $token = $this->service->viewToken($runId, $workspaceId, $tenantIds, self::TOKEN_TTL);
        $url = $this->service->viewerBase() . '/v1/runs/' . $runId;
        $context = stream_context_create(['http' => [
            'method' => 'GET',
            'header' => "Authorization: Bearer {$token}\r\nAccept: application/json\r\n",
            'timeout' => $this->timeout,
            'ignore_errors' => true,
        ]]);
        $body = @file_get_contents($url, false, $context);
        $status = 0;
        foreach ($http_response_header ?? [] as $line) {
            if (preg_match('#^HTTP/\S+\s+(\d{3})#', $line, $m) === 1) {
                $status = (int) $m[1];
            }
        }
        if ($body === false || $status === 0) {
            throw new ViewerError("the run viewer at {$this->service->viewerBase()} did not answer");
        }
        $decoded = json_decode($body, true);
        if ($status !== 200 || !is_array($decoded)) {
            $code = is_array($decoded) ? ($decoded['error']['code'] ?? null) : null;
            $message = is_array($decoded) ? ($decoded['error']['message'] ?? '') : '';
            if ($code === 'not_found') {
                throw new ViewerError("run {$runId} is not found in workspace {$workspaceId}" . ($tenantIds !== null ? ' and tenants ' . implode(', ', $tenantIds) : ''), $code, $status);
            }
            throw new ViewerError("the run viewer answered {$status}" . ($code !== null ? " {$code}: {$message}" : ''), $code, $status);
        }
        return $decoded;
    }
}
