<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\View\Components;

use Illuminate\View\Component;
use OperationRuns\OperationRunService;

/**
 * `<x-operation-runs::progress :run="$runId" :workspace="$workspaceId" :tenant="$tenantId" />`:
 * the run's live progress inside a platform page — a `<progress>` element and a status line fed
 * by the viewer's live stream (`GET /v1/runs/{id}/live`, Server-Sent Events) through an
 * `EventSource` whose URL carries a token that reads that one run only, minted when the page is
 * rendered ({@see OperationRunService::liveUrl()}, `progress.token_ttl` seconds). The viewer
 * must list the platform's origin in `--viewer-allowed-origins` (decision 0088); the platform's
 * Content-Security-Policy must allow `connect-src` to the viewer, and its script (`nonce`
 * attribute) when it forbids inline scripts.
 *
 * `workspace` and `tenant` are the run's scope as the platform knows it (`tenant` null: a
 * workspace-scoped run); a run outside them shows nothing (the viewer answers "not found").
 */
final class Progress extends Component
{
    /** The live stream's URL, token included. */
    public string $liveUrl;

    /**
     * @param int|string $run the run id
     * @param int|string $workspace the run's workspace id
     * @param int|string|null $tenant the run's tenant id (null: a workspace-scoped run)
     * @param string|null $nonce the page's CSP nonce for the component's script
     */
    public function __construct(
        OperationRunService $service,
        public int|string $run,
        public int|string $workspace,
        public int|string|null $tenant = null,
        public ?string $nonce = null,
        ?int $ttl = null,
    ) {
        $this->run = (int) $run;
        $tenants = $tenant === null ? null : [(int) $tenant];
        $ttl ??= (int) (config('operation-runs.progress.token_ttl') ?? 900);
        $this->liveUrl = $service->liveUrl($this->run, (int) $workspace, $tenants, $ttl);
    }

    public function render()
    {
        return view('operation-runs::components.progress');
    }
}
