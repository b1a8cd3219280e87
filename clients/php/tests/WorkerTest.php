<?php

declare(strict_types=1);

namespace OperationRuns\Tests;

use OperationRuns\AmqpUrl;
use OperationRuns\EventSubscriber;
use OperationRuns\OperationRunService;
use OperationRuns\RunHandle;
use OperationRuns\Worker;
use PHPUnit\Framework\TestCase;

/**
 * The worker against a running service that hands jobs off (tests/it/clients.rs starts one with
 * `--hand-off-jobs` and runs this group alone): a job executed once with its progress, a cancel
 * that reaches the running handler, a queued run's cancel that never reaches it, and failures.
 *
 * @group worker
 */
final class WorkerTest extends TestCase
{
    private OperationRunService $service;
    private EventSubscriber $events;
    private Worker $worker;
    private int $workspace;
    private int $tenant;
    /** @var array<int, array<string, mixed>> runs by id, as their completion events show them */
    private array $completions = [];

    protected function setUp(): void
    {
        foreach (['AMQP_URL', 'OPRUN_NAMESPACE', 'OPRUN_WORKSPACE_ID', 'OPRUN_TENANT_ID'] as $name) {
            if (getenv($name) === false) {
                self::fail("{$name} is not set: run these tests through `cargo test --test it clients::`");
            }
        }
        $this->service = new OperationRunService(getenv('AMQP_URL'), getenv('OPRUN_NAMESPACE'));
        // Bound before anything is dispatched, so every event of the test's runs is in it.
        $this->events = new EventSubscriber(getenv('AMQP_URL'), getenv('OPRUN_NAMESPACE'));
        $this->workspace = (int) getenv('OPRUN_WORKSPACE_ID');
        $this->tenant = (int) getenv('OPRUN_TENANT_ID');
        $this->worker = new Worker(getenv('AMQP_URL'), getenv('OPRUN_NAMESPACE'), 'php-' . bin2hex(random_bytes(6)), ['inventory.sync']);
        $this->worker->declare();
    }

    protected function tearDown(): void
    {
        $queue = $this->worker->queue();
        $this->worker->close();
        $this->events->close();
        $this->service->close();
        $connection = AmqpUrl::connect(getenv('AMQP_URL'));
        $connection->channel()->queue_delete($queue);
        $connection->close();
    }

    public function testAJobIsExecutedOnceWithItsProgressAndAckedAfterItsCompletion(): void
    {
        $run = $this->dispatch();
        $calls = 0;
        $settled = $this->worker->run(function (RunHandle $job) use (&$calls, $run): ?string {
            $calls++;
            self::assertSame([$run, 'inventory.sync', $this->workspace, $this->tenant], [$job->runId, $job->type, $job->workspaceId, $job->tenantId]);
            $job->progress(total: 2);
            $job->progress(processed: 2, succeeded: 2);
            return null;
        }, maxJobs: 1, idleTimeout: 20.0);
        self::assertSame([1, 1], [$settled, $calls]);
        $completed = $this->completed($run);
        self::assertSame('succeeded', $completed['outcome']);
        self::assertEquals(['total' => 2, 'processed' => 2, 'succeeded' => 2], $completed['summary_counts']);
        // Acked: nothing comes again.
        self::assertSame(0, $this->worker->run(fn (): ?string => self::fail('the job came again'), idleTimeout: 1.0));
    }

    public function testACancelReachesTheRunningHandlerAndTheRunCompletesCancelled(): void
    {
        $run = $this->dispatch();
        $answer = null;
        $saw = false;
        $this->worker->run(function (RunHandle $job) use (&$answer, &$saw): ?string {
            self::assertFalse($job->cancelRequested());
            // The platform asks while the handler works.
            $answer = $this->service->cancel($job->runId, $job->workspaceId, $job->tenantId, 'not needed');
            $deadline = microtime(true) + 20;
            while (!$job->cancelRequested() && microtime(true) < $deadline) {
                usleep(50_000);
            }
            $saw = $job->cancelRequested();
            return null;
        }, maxJobs: 1, idleTimeout: 20.0);
        self::assertSame('requested', $answer?->result);
        self::assertTrue($saw, 'the cancel reached the handler');
        self::assertSame('cancelled', $this->completed($run)['outcome']);
    }

    public function testAQueuedRunsCancelCompletesItAndItsJobIsAckedWithoutRunningTheHandler(): void
    {
        $run = $this->dispatch();
        self::assertSame('done', $this->service->cancel($run, $this->workspace, $this->tenant)->result);
        $settled = $this->worker->run(fn (): ?string => self::fail('a cancelled run is not executed'), maxJobs: 1, idleTimeout: 20.0);
        self::assertSame(1, $settled);
        self::assertSame('cancelled', $this->completed($run)['outcome']);
    }

    public function testFailuresAndAThrowingHandlerCompleteTheRunFailed(): void
    {
        $failed = $this->dispatch();
        $threw = $this->dispatch();
        $this->worker->run(function (RunHandle $job) use ($failed): ?string {
            if ($job->runId === $failed) {
                $job->fail('device.unreachable', 'dev-7 did not answer', item: 'dev-7');
                return null;
            }
            throw new \RuntimeException('provider said password=hunter2');
        }, maxJobs: 2, idleTimeout: 20.0);
        $run = $this->completed($failed);
        self::assertSame('failed', $run['outcome']);
        self::assertSame('device.unreachable', $run['failure_summary'][0]['code'] ?? null, json_encode($run['failure_summary']));
        $run = $this->completed($threw);
        self::assertSame('failed', $run['outcome']);
        $entry = $run['failure_summary'][0] ?? [];
        self::assertSame(Worker::HANDLER_FAILED, $entry['code'] ?? null);
        self::assertStringContainsString('RuntimeException', $entry['message']);
        self::assertStringNotContainsString('hunter2', $entry['message']);
    }

    private function dispatch(): int
    {
        return $this->service->dispatchOrFail('inventory.sync', $this->workspace, $this->tenant, ['selection' => 'php-' . bin2hex(random_bytes(6))])->runId;
    }

    /**
     * The run as its completion event shows it.
     *
     * @return array<string, mixed>
     */
    private function completed(int $runId): array
    {
        if (!isset($this->completions[$runId])) {
            foreach ($this->events->events(20.0) as $event) {
                if ($event['type'] === 'operation_run.completed') {
                    $this->completions[$event['data']['run']['id']] = $event['data']['run'];
                    if (isset($this->completions[$runId])) {
                        break;
                    }
                }
            }
        }
        return $this->completions[$runId] ?? self::fail("run {$runId} did not complete");
    }
}
