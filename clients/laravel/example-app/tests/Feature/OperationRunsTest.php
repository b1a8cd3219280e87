<?php

namespace Tests\Feature;

use App\OperationRuns\Inventory;
use Illuminate\Support\Facades\Artisan;
use Illuminate\Support\Facades\Event;
use OperationRuns\AmqpUrl;
use OperationRuns\Laravel\Events\OperationRunCompleted;
use OperationRuns\Laravel\Events\OperationRunProgressed;
use OperationRuns\Laravel\OperationRunsServiceProvider;
use OperationRuns\OperationRunService;
use Tests\TestCase;

/**
 * The application as a platform team writes it, against the real service (tests/it/clients.rs
 * starts one that hands jobs off, and a viewer): a run dispatched through the facade, executed by
 * `operation-runs:work` with its progress, its completion heard as a Laravel event through
 * `operation-runs:listen`, a cancel that stops the running handler, and the progress component in
 * a page.
 */
final class OperationRunsTest extends TestCase
{
    /** @var list<string> */
    private array $queues = [];

    public static function setUpBeforeClass(): void
    {
        foreach (['AMQP_URL', 'OPRUN_NAMESPACE', 'OPRUN_WORKSPACE_ID', 'OPRUN_TENANT_ID', 'OPRUN_VIEWER_URL', 'OPRUN_VIEWER_SECRET'] as $name) {
            if (getenv($name) === false) {
                self::fail("{$name} is not set: run these tests through `cargo test --test it clients::`");
            }
        }
        // As the application's .env would set them.
        putenv('OPERATION_RUNS_AMQP_URL=' . getenv('AMQP_URL'));
        putenv('OPERATION_RUNS_NAMESPACE=' . getenv('OPRUN_NAMESPACE'));
        putenv('OPERATION_RUNS_VIEWER_URL=' . getenv('OPRUN_VIEWER_URL'));
        putenv('OPERATION_RUNS_API_SECRET=' . getenv('OPRUN_VIEWER_SECRET'));
    }

    protected function setUp(): void
    {
        parent::setUp();
        // A worker and an events queue of this test's own, declared before anything is dispatched.
        $name = 'example-' . bin2hex(random_bytes(6));
        $namespace = getenv('OPRUN_NAMESPACE');
        config(['operation-runs.worker.name' => $name, 'operation-runs.events.queue' => "{$namespace}.subscriber.{$name}"]);
        $this->queues = ["{$namespace}.worker.{$name}", "{$namespace}.subscriber.{$name}"];
        $this->assertSame(0, Artisan::call('operation-runs:listen', ['--idle-timeout' => '0.1']));
        $this->assertSame(0, Artisan::call('operation-runs:work', ['--idle-timeout' => '0.1']));
    }

    protected function tearDown(): void
    {
        $this->app->make(OperationRunService::class)->close();
        $connection = AmqpUrl::connect(getenv('AMQP_URL'));
        foreach ($this->queues as $queue) {
            $connection->channel()->queue_delete($queue);
        }
        $connection->close();
        parent::tearDown();
    }

    public function testThePackageIsDiscoveredWithItsProviderAndFacadeAlias(): void
    {
        $this->assertArrayHasKey(OperationRunsServiceProvider::class, $this->app->getLoadedProviders());
        $this->assertSame($this->app->make(OperationRunService::class), \OperationRuns::getFacadeRoot());
        $this->assertFileExists($this->app->bootstrapPath('cache/packages.php'));
    }

    public function testADispatchedRunIsExecutedByWorkWithItsProgressAndItsCompletionIsALaravelEvent(): void
    {
        $completed = [];
        $progressed = 0;
        Event::listen(OperationRunCompleted::class, function (OperationRunCompleted $event) use (&$completed): void {
            $completed[$event->runId()] = $event->run;
        });
        Event::listen(OperationRunProgressed::class, function () use (&$progressed): void {
            $progressed++;
        });

        $devices = ['dev-1', 'dev-2', 'offline-3'];
        $run = \OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), ['selection' => $this->unique(), 'devices' => $devices]);
        $this->assertFalse($run->deduplicated);

        $this->assertSame(0, Artisan::call('operation-runs:work', ['--max-jobs' => '1', '--idle-timeout' => '20']));
        $this->assertStringContainsString('1 job(s) settled', Artisan::output());
        $this->assertSame([$run->runId => $devices], $this->app->make(Inventory::class)->synced);

        for ($i = 0; $i < 20 && !isset($completed[$run->runId]); $i++) {
            Artisan::call('operation-runs:listen', ['--idle-timeout' => '0.5']);
        }
        $this->assertArrayHasKey($run->runId, $completed, 'the completion is heard as a Laravel event');
        $this->assertSame('partially_succeeded', $completed[$run->runId]['outcome']);
        $counts = $completed[$run->runId]['summary_counts'];
        ksort($counts);
        $this->assertSame(['failed' => 1, 'processed' => 3, 'succeeded' => 2, 'total' => 3], $counts);
        $this->assertGreaterThanOrEqual(3, $progressed);
    }

    public function testACancelWhileTheHandlerRunsStopsItAndTheRunCompletesCancelled(): void
    {
        $devices = array_map(static fn (int $i): string => "dev-{$i}", range(1, 100));
        $run = \OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), ['selection' => $this->unique(), 'devices' => $devices]);
        $inventory = $this->app->make(Inventory::class);
        $answers = [];
        // The platform cancels the run once its first device is synced (an operator's click).
        $inventory->afterSync = function (int $runId, string $device) use (&$answers): void {
            if ($device === 'dev-1') {
                $answers[] = \OperationRuns::cancel($runId, $this->workspace(), $this->tenant(), 'not needed')->result;
            }
        };

        $this->assertSame(0, Artisan::call('operation-runs:work', ['--max-jobs' => '1', '--idle-timeout' => '20']));
        $this->assertSame(['requested'], $answers);
        $synced = count($inventory->synced[$run->runId]);
        $this->assertLessThan(count($devices), $synced, 'the handler stopped');

        $status = $this->status($run->runId);
        $this->assertStringContainsString('completed, cancelled', $status);
        $this->assertStringContainsString("processed {$synced}", $status);
    }

    public function testAPageShowsTheRunsProgressComponentOnTheViewersLiveStream(): void
    {
        $run = \OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), ['selection' => $this->unique(), 'devices' => ['dev-1']]);
        $html = view('run', ['runId' => $run->runId, 'workspaceId' => $this->workspace(), 'tenantId' => $this->tenant()])->render();

        $this->assertStringContainsString('<progress max="100"', $html);
        $this->assertSame(1, preg_match('/data-operation-runs-live="([^"]+)"/', $html, $m));
        $this->assertStringStartsWith(rtrim(getenv('OPRUN_VIEWER_URL'), '/') . "/v1/runs/{$run->runId}/live?token=", html_entity_decode($m[1]));
        $this->assertStringContainsString('new EventSource(', $html);
    }

    private function status(int $runId): string
    {
        $exit = Artisan::call('operation-runs:status', ['run' => (string) $runId, '--workspace' => (string) $this->workspace(), '--tenant' => [(string) $this->tenant()]]);
        $output = Artisan::output();
        $this->assertSame(0, $exit, $output);
        return $output;
    }

    private function workspace(): int
    {
        return (int) getenv('OPRUN_WORKSPACE_ID');
    }

    private function tenant(): int
    {
        return (int) getenv('OPRUN_TENANT_ID');
    }

    private function unique(): string
    {
        return 'example-' . bin2hex(random_bytes(6));
    }
}
