<?php

declare(strict_types=1);

namespace OperationRuns\Tests;

use OperationRuns\ActionResult;
use OperationRuns\AmqpUrl;
use OperationRuns\CommandNotAnswered;
use OperationRuns\CommandRefused;
use OperationRuns\EventSubscriber;
use OperationRuns\OperationRunService;
use PHPUnit\Framework\TestCase;

/**
 * Against a running service (tests/it/clients.rs starts one and sets the environment):
 * AMQP_URL, OPRUN_NAMESPACE, OPRUN_WORKSPACE_ID, OPRUN_TENANT_ID, OPRUN_OTHER_TENANT_ID.
 */
final class OperationRunServiceTest extends TestCase
{
    private OperationRunService $service;
    private int $workspace;
    private int $tenant;

    protected function setUp(): void
    {
        foreach (['AMQP_URL', 'OPRUN_NAMESPACE', 'OPRUN_WORKSPACE_ID', 'OPRUN_TENANT_ID', 'OPRUN_OTHER_TENANT_ID'] as $name) {
            if (getenv($name) === false) {
                self::fail("{$name} is not set: run these tests through `cargo test --test it clients::`");
            }
        }
        $this->service = new OperationRunService(getenv('AMQP_URL'), getenv('OPRUN_NAMESPACE'));
        $this->workspace = (int) getenv('OPRUN_WORKSPACE_ID');
        $this->tenant = (int) getenv('OPRUN_TENANT_ID');
    }

    protected function tearDown(): void
    {
        $this->service->close();
    }

    public function testDispatchCreatesARunAndASecondDispatchOfItsIdentityIsDeduplicated(): void
    {
        $policy = 'php-' . bin2hex(random_bytes(6));
        $first = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => $policy], [
            'userId' => 5,
            'initiatorName' => 'phpunit',
        ]);
        self::assertGreaterThan(0, $first->runId);
        self::assertFalse($first->deduplicated);
        self::assertMatchesRegularExpression('/^[0-9a-f]{64}$/', $first->runIdentityHash);
        self::assertSame('queued', $first->status);

        $again = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => $policy, 'note' => 'ignored']);
        self::assertSame($first->runId, $again->runId);
        self::assertTrue($again->deduplicated);
        self::assertSame($first->runIdentityHash, $again->runIdentityHash);
    }

    public function testTheSameCommandIdIsAppliedOnce(): void
    {
        $id = OperationRunService::newCommandId();
        $policy = 'php-' . bin2hex(random_bytes(6));
        $first = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => $policy], ['commandId' => $id]);
        $again = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => $policy], ['commandId' => $id]);
        self::assertSame($id, $first->commandId);
        self::assertSame($first->runId, $again->runId);
        self::assertFalse($again->deduplicated, 'the first result is replied again');
    }

    public function testARefusalThrowsCommandRefusedWithItsCode(): void
    {
        try {
            $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policyId' => 1]);
            self::fail('a dispatch without its identity key is refused');
        } catch (CommandRefused $e) {
            self::assertSame('missing_identity_key', $e->getErrorCode());
            self::assertStringContainsString('missing_identity_key', $e->getMessage());
        }
        try {
            $this->service->dispatchOrFail('no.such.type', $this->workspace, null, []);
            self::fail('an unknown type is refused');
        } catch (CommandRefused $e) {
            self::assertSame('unknown_type', $e->getErrorCode());
        }
    }

    public function testProgressIsAppliedAndEventsArriveInOrder(): void
    {
        $subscriber = new EventSubscriber(getenv('AMQP_URL'), getenv('OPRUN_NAMESPACE'));
        $trace = OperationRunService::newTraceparent();
        $run = $this->service->dispatchOrFail('inventory.sync', $this->workspace, $this->tenant, ['selection' => 'php-' . bin2hex(random_bytes(6))], [
            'traceparent' => $trace,
        ]);

        $reply = $this->service->updateRun($run->runId, $this->workspace, $this->tenant, ['status' => 'running']);
        self::assertEquals(['run_id' => $run->runId, 'status' => 'running', 'outcome' => 'pending'], $reply);
        $this->service->incrementSummaryCounts($run->runId, $this->workspace, $this->tenant, ['total' => 2, 'processed' => 1]);
        $this->service->appendFailures($run->runId, $this->workspace, $this->tenant, [
            ['code' => 'device.unreachable', 'message' => 'device 7 password=hunter2', 'item' => ['id' => 7]],
        ]);
        $done = $this->service->updateRun($run->runId, $this->workspace, $this->tenant, [
            'status' => 'completed',
            'outcome' => 'partially_succeeded',
            'summary_counts' => ['processed' => 1],
        ]);
        self::assertSame('completed', $done['status']);
        self::assertSame('partially_succeeded', $done['outcome']);

        $mine = [];
        foreach ($subscriber->events(20.0) as $event) {
            if (($event['data']['run']['id'] ?? null) !== $run->runId) {
                continue;
            }
            $mine[] = $event;
            if ($event['type'] === 'operation_run.completed') {
                break;
            }
        }
        $subscriber->close();
        self::assertSame(
            ['operation_run.queued', 'operation_run.started', 'operation_run.progressed', 'operation_run.progressed', 'operation_run.completed'],
            array_column($mine, 'type'),
        );
        self::assertSame([1, 2, 3, 4, 5], array_map(static fn (array $e): int => $e['data']['sequence'], $mine));
        // The dispatch's trace context is kept with the run and set on every event of it.
        self::assertSame([$trace], array_values(array_unique(array_column($mine, 'traceparent'))));
        $last = end($mine)['data']['run'];
        self::assertEquals(['processed' => 2, 'total' => 2], $last['summary_counts']);
        self::assertStringNotContainsString('hunter2', json_encode($last['failure_summary']));
    }

    public function testAnotherTenantsRunIsNotFound(): void
    {
        $run = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 'php-' . bin2hex(random_bytes(6))]);
        $this->expectException(CommandRefused::class);
        $this->expectExceptionMessage('run_not_found');
        $this->service->incrementSummaryCounts($run->runId, $this->workspace, (int) getenv('OPRUN_OTHER_TENANT_ID'), ['total' => 1]);
    }

    public function testCancellingAQueuedRunIsDoneOnceAndARunningRunsCancelIsRequested(): void
    {
        $queued = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 'php-' . bin2hex(random_bytes(6))]);
        $done = $this->service->cancel($queued->runId, $this->workspace, $this->tenant, 'not needed', ['initiatorName' => 'phpunit', 'userId' => 5]);
        self::assertSame([$queued->runId, 'cancel', ActionResult::DONE, null], [$done->runId, $done->action, $done->result, $done->error]);
        $again = $this->service->cancel($queued->runId, $this->workspace, $this->tenant);
        self::assertSame(ActionResult::UNCHANGED, $again->result);
        self::assertStringContainsString('already completed as cancelled', (string) $again->error);

        $running = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 'php-' . bin2hex(random_bytes(6))]);
        $this->service->updateRun($running->runId, $this->workspace, $this->tenant, ['status' => 'running']);
        $requested = $this->service->cancel($running->runId, $this->workspace, $this->tenant);
        self::assertSame(ActionResult::REQUESTED, $requested->result);
        // The executor's answer: the run completes cancelled.
        $completed = $this->service->updateRun($running->runId, $this->workspace, $this->tenant, ['status' => 'completed', 'outcome' => 'cancelled']);
        self::assertSame('cancelled', $completed['outcome']);
    }

    public function testARetryDispatchesANewRunAndAnOperatorFailNeverOverwritesACompletion(): void
    {
        $run = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 'php-' . bin2hex(random_bytes(6))]);
        $this->service->cancel($run->runId, $this->workspace, $this->tenant);
        $commandId = OperationRunService::newCommandId();
        $retried = $this->service->retry($run->runId, $this->workspace, $this->tenant, 'try again', ['commandId' => $commandId]);
        self::assertSame([ActionResult::DONE, false, $commandId], [$retried->result, $retried->deduplicated, $retried->commandId]);
        self::assertNotNull($retried->newRunId);
        self::assertNotSame($run->runId, $retried->newRunId);
        // The same command id again: applied once, its first answer replied again.
        $replayed = $this->service->retry($run->runId, $this->workspace, $this->tenant, 'try again', ['commandId' => $commandId]);
        self::assertSame($retried->newRunId, $replayed->newRunId);

        $failed = $this->service->fail($retried->newRunId, $this->workspace, $this->tenant, 'executor gone');
        self::assertSame(['fail', ActionResult::DONE], [$failed->action, $failed->result]);
        $cancel = $this->service->cancel($retried->newRunId, $this->workspace, $this->tenant);
        self::assertSame(ActionResult::REFUSED, $cancel->result);
        self::assertStringContainsString('never overwritten', (string) $cancel->error);
        $notRetried = $this->service->retry($this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 'php-' . bin2hex(random_bytes(6))])->runId, $this->workspace, $this->tenant);
        self::assertSame(ActionResult::REFUSED, $notRetried->result, 'a queued run is not retried');
    }

    public function testAnActionOnAnotherTenantsRunIsNotFound(): void
    {
        $run = $this->service->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 'php-' . bin2hex(random_bytes(6))]);
        try {
            $this->service->cancel($run->runId, $this->workspace, (int) getenv('OPRUN_OTHER_TENANT_ID'));
            self::fail("another tenant's run cannot be cancelled");
        } catch (CommandRefused $e) {
            self::assertSame('run_not_found', $e->getErrorCode());
        }
        $still = $this->service->updateRun($run->runId, $this->workspace, $this->tenant, ['status' => 'running']);
        self::assertSame('running', $still['status']);
    }

    public function testAMissingTopologyIsUnroutableNotSilent(): void
    {
        $missing = new OperationRunService(getenv('AMQP_URL'), 'oprun_php_missing_' . bin2hex(random_bytes(4)));
        try {
            $missing->dispatchOrFail('policy.sync', 1, null, ['policy_id' => 1], ['timeout' => 5]);
            self::fail('a dispatch into no topology cannot succeed');
        } catch (CommandNotAnswered $e) {
            self::assertTrue($e->isUnroutable(), $e->getMessage());
        } finally {
            $missing->close();
        }

        // An exchange with no queue bound: the broker returns the mandatory message.
        $namespace = 'oprun_php_unbound_' . bin2hex(random_bytes(4));
        $connection = AmqpUrl::connect(getenv('AMQP_URL'));
        $channel = $connection->channel();
        $channel->exchange_declare("{$namespace}.commands", 'topic', false, false, true);
        $unbound = new OperationRunService(getenv('AMQP_URL'), $namespace);
        try {
            $unbound->dispatchOrFail('policy.sync', 1, null, ['policy_id' => 1], ['timeout' => 5]);
            self::fail('an unroutable dispatch cannot succeed');
        } catch (CommandNotAnswered $e) {
            self::assertSame(CommandNotAnswered::UNROUTABLE, $e->getReason());
        } finally {
            $unbound->close();
            $channel->exchange_delete("{$namespace}.commands");
            $connection->close();
        }
    }

    public function testNoReplyInTimeIsCommandNotAnswered(): void
    {
        // A queue nobody consumes stands in for a service that is down.
        $namespace = 'oprun_php_silent_' . bin2hex(random_bytes(4));
        $connection = AmqpUrl::connect(getenv('AMQP_URL'));
        $channel = $connection->channel();
        $channel->exchange_declare("{$namespace}.commands", 'topic', false, false, true);
        [$queue] = $channel->queue_declare('', false, false, true, true);
        $channel->queue_bind($queue, "{$namespace}.commands", '#');
        $silent = new OperationRunService(getenv('AMQP_URL'), $namespace);
        try {
            $silent->dispatchOrFail('policy.sync', 1, null, ['policy_id' => 1], ['timeout' => 0.5]);
            self::fail('no reply cannot be a result');
        } catch (CommandNotAnswered $e) {
            self::assertSame(CommandNotAnswered::TIMEOUT, $e->getReason());
        } finally {
            $silent->close();
            $channel->exchange_delete("{$namespace}.commands");
            $connection->close();
        }
    }
}
