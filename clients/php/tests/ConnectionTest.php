<?php

declare(strict_types=1);

namespace OperationRuns\Tests;

use OperationRuns\CommandNotAnswered;
use OperationRuns\ConnectionLost;
use OperationRuns\EventSubscriber;
use OperationRuns\OperationRunService;
use PHPUnit\Framework\TestCase;

/**
 * A client whose connection is lost, a URL list, and errors without passwords, against the
 * running service and the machine's broker (tests/it/clients.rs sets the environment).
 * Connections are dropped from the broker's side with `rabbitmqctl close_connection`, each test
 * closing only the connection it named, never another test's.
 */
final class ConnectionTest extends TestCase
{
    private string $url;
    private string $namespace;
    private int $workspace;
    private int $tenant;

    protected function setUp(): void
    {
        foreach (['AMQP_URL', 'OPRUN_NAMESPACE', 'OPRUN_WORKSPACE_ID', 'OPRUN_TENANT_ID'] as $name) {
            if (getenv($name) === false) {
                self::fail("{$name} is not set: run these tests through `cargo test --test it clients::`");
            }
        }
        $this->url = getenv('AMQP_URL');
        $this->namespace = getenv('OPRUN_NAMESPACE');
        $this->workspace = (int) getenv('OPRUN_WORKSPACE_ID');
        $this->tenant = (int) getenv('OPRUN_TENANT_ID');
    }

    public function testEveryCallAfterTheBrokerClosedTheConnectionIsSentAgainOnAFreshOne(): void
    {
        $name = self::unique('php-dropped');
        $runs = new OperationRunService($this->url, $this->namespace, $name);
        try {
            $run = $runs->dispatchOrFail('inventory.sync', $this->workspace, $this->tenant, ['selection' => self::unique('php')]);

            self::closeConnectionsNamed($name);
            $again = $runs->dispatchOrFail('inventory.sync', $this->workspace, $this->tenant, ['selection' => self::unique('php')]);
            self::assertGreaterThan($run->runId, $again->runId);
            self::closeConnectionsNamed($name);
            self::assertSame('running', $runs->updateRun($run->runId, $this->workspace, $this->tenant, ['status' => 'running'])['status']);
            self::closeConnectionsNamed($name);
            $runs->incrementSummaryCounts($run->runId, $this->workspace, $this->tenant, ['total' => 2, 'processed' => 1]);
            self::closeConnectionsNamed($name);
            $runs->appendFailures($run->runId, $this->workspace, $this->tenant, [['code' => 'device.unreachable', 'message' => 'dev-7', 'item' => 'dev-7']]);
            self::closeConnectionsNamed($name);
            $done = $runs->updateRun($run->runId, $this->workspace, $this->tenant, [
                'status' => 'completed', 'outcome' => 'partially_succeeded', 'summary_counts' => ['processed' => 1],
            ]);
            self::assertSame(['completed', 'partially_succeeded'], [$done['status'], $done['outcome']]);
            // The lost connections were released, not leaked: only the fresh one is open.
            self::assertCount(1, self::connectionsNamed($name));
        } finally {
            $runs->close();
        }
    }

    public function testAnIdleWorkerWhoseConnectionMissedItsHeartbeatsSendsOnAFreshOne(): void
    {
        $name = self::unique('php-idle');
        $first = explode(',', $this->url)[0];
        // A one-second heartbeat: php-amqplib answers none between calls, so the broker closes it.
        $runs = new OperationRunService($first . (str_contains($first, '?') ? '&' : '?') . 'heartbeat=1', $this->namespace, $name);
        try {
            $runs->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => self::unique('php')]);
            $deadline = microtime(true) + 60;
            while (self::connectionsNamed($name) !== []) {
                self::assertLessThan($deadline, microtime(true), 'the broker closes the idle connection');
                usleep(200_000);
            }
            $run = $runs->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => self::unique('php')]);
            self::assertSame('queued', $run->status);
        } finally {
            $runs->close();
        }
    }

    public function testASubscriptionWhoseConnectionIsClosedResumesOnAFreshOne(): void
    {
        $name = self::unique('php-subscriber');
        $queue = $this->namespace . '.subscriber.' . self::unique('php');
        // Bound before the run exists: every event of it is in the queue.
        // Prefetch 1: the events after the drop must come through a fresh connection.
        $events = new EventSubscriber($this->url, $this->namespace, $queue, 1, $name);
        $runs = new OperationRunService($this->url, $this->namespace);
        $run = $runs->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => self::unique('php')]);
        $runs->updateRun($run->runId, $this->workspace, $this->tenant, ['status' => 'completed', 'outcome' => 'succeeded']);
        $runs->close();
        $seen = [];
        $dropped = false;
        try {
            foreach ($events->events(20.0) as $event) {
                if (!$dropped) {
                    $dropped = true;
                    self::closeConnectionsNamed($name);
                }
                if (($event['data']['run']['id'] ?? null) === $run->runId) {
                    $seen[$event['id']] = $event['type'];
                    if ($event['type'] === 'operation_run.completed') {
                        break;
                    }
                }
            }
        } finally {
            $events->close();
            $admin = \OperationRuns\AmqpUrl::connect($this->url);
            $admin->channel()->queue_delete($queue);
            $admin->close();
        }
        self::assertTrue($dropped);
        self::assertSame(['operation_run.queued', 'operation_run.completed'], array_values($seen));
    }

    public function testAnExclusiveSubscriptionWhoseConnectionIsClosedThrowsConnectionLost(): void
    {
        $name = self::unique('php-exclusive');
        $events = new EventSubscriber($this->url, $this->namespace, null, 100, $name);
        self::closeConnectionsNamed($name);
        try {
            foreach ($events->events(20.0) as $event) {
                self::fail('no event can come through a closed connection');
            }
            self::fail('the subscription cannot end quietly');
        } catch (ConnectionLost $e) {
            self::assertStringContainsString('exclusive queue', $e->getMessage());
        } finally {
            $events->close();
        }
    }

    public function testAUrlListWithADeadFirstNodeIsServedByTheNext(): void
    {
        $dead = 'amqp://guest:dead-node-s3cret@127.0.0.1:' . self::closedPort() . '/%2f';
        $other = 'amqp://other:0ther-s3cret@127.0.0.1:' . self::closedPort() . '/%2f';
        foreach (["{$dead},{$this->url}", [$dead, ...explode(',', $this->url)], "{$this->url}, {$other}"] as $urls) {
            $runs = new OperationRunService($urls, $this->namespace);
            try {
                $run = $runs->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => self::unique('php')]);
                self::assertSame('queued', $run->status);
            } finally {
                $runs->close();
            }
        }
        $events = new EventSubscriber("{$dead},{$this->url}", $this->namespace);
        self::assertNotSame('', $events->queueName());
        $events->close();
    }

    public function testAfterALostConnectionTheNextUrlIsTriedFirst(): void
    {
        // Two URLs of the one broker told apart by their heartbeat (the broker lists it).
        $first = explode(',', $this->url)[0];
        $second = $first . (str_contains($first, '?') ? '&' : '?') . 'heartbeat=7';
        $name = self::unique('php-rotate');
        $runs = new OperationRunService([$first, $second], $this->namespace, $name);
        try {
            $dispatch = fn () => $runs->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => self::unique('php')]);
            $dispatch();
            self::assertNotSame(['7'], self::heartbeatsOf($name), 'the first URL answers first');
            self::closeConnectionsNamed($name);
            $dispatch();
            self::assertSame(['7'], self::heartbeatsOf($name), 'after a lost connection, the next URL');
            self::closeConnectionsNamed($name);
            $dispatch();
            self::assertNotSame(['7'], self::heartbeatsOf($name), 'and round again');
        } finally {
            $runs->close();
        }
    }

    public function testWithNoNodeAnsweringEveryCallThrowsTheDocumentedErrorsWithoutAPassword(): void
    {
        $secret = 'n0-broker-s3cret';
        $urls = "amqp://guest:{$secret}@127.0.0.1:" . self::closedPort() . "/%2f, amqp://guest:{$secret}@127.0.0.1:" . self::closedPort() . '/%2f';
        $runs = new OperationRunService($urls, $this->namespace);
        foreach ([
            fn () => $runs->dispatchOrFail('policy.sync', $this->workspace, $this->tenant, ['policy_id' => 1], ['timeout' => 5]),
            fn () => $runs->incrementSummaryCounts(1, $this->workspace, $this->tenant, ['total' => 1]),
        ] as $call) {
            try {
                $call();
                self::fail('no broker, no answer');
            } catch (CommandNotAnswered $e) {
                self::assertSame(CommandNotAnswered::CONNECTION_LOST, $e->getReason());
                self::assertStringContainsString('guest:***@127.0.0.1', $e->getMessage());
                self::assertStringNotContainsString($secret, (string) $e);
                self::assertNull($e->getPrevious());
            }
        }
        try {
            new EventSubscriber($urls, $this->namespace);
            self::fail('no broker, no subscription');
        } catch (ConnectionLost $e) {
            self::assertStringNotContainsString($secret, (string) $e);
        }
        self::assertStringNotContainsString($secret, print_r($runs, true));
    }

    public function testAUrlThatIsNotAmqpIsRefusedWithoutItsPassword(): void
    {
        try {
            new OperationRunService("{$this->url},http://guest:n0t-amqp-s3cret@127.0.0.1/");
            self::fail('an http URL is not a broker');
        } catch (\InvalidArgumentException $e) {
            self::assertStringContainsString('guest:***@', $e->getMessage());
            self::assertStringNotContainsString('n0t-amqp-s3cret', (string) $e);
        }
    }

    private static function unique(string $prefix): string
    {
        return $prefix . '-' . bin2hex(random_bytes(6));
    }

    /** A local port nothing listens on (bound, then released). */
    private static function closedPort(): int
    {
        $server = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) substr(strrchr(stream_socket_get_name($server, false), ':'), 1);
        fclose($server);
        return $port;
    }

    /** @return list<string> the broker's pids of the connections named `$name` */
    private static function connectionsNamed(string $name): array
    {
        exec('rabbitmqctl -q --no-table-headers list_connections pid client_properties 2>&1', $lines, $status);
        self::assertSame(0, $status, implode("\n", $lines));
        $pids = [];
        foreach ($lines as $line) {
            if (str_contains($line, "\"{$name}\"")) {
                $pids[] = strtok($line, " \t");
            }
        }
        return $pids;
    }

    /** @return list<string> the heartbeat (s) of each connection named `$name` */
    private static function heartbeatsOf(string $name): array
    {
        exec('rabbitmqctl -q --no-table-headers list_connections timeout client_properties 2>&1', $lines, $status);
        self::assertSame(0, $status, implode("\n", $lines));
        $heartbeats = [];
        foreach ($lines as $line) {
            if (str_contains($line, "\"{$name}\"")) {
                $heartbeats[] = (string) strtok($line, " \t");
            }
        }
        return $heartbeats;
    }

    private static function closeConnectionsNamed(string $name): void
    {
        $pids = self::connectionsNamed($name);
        self::assertNotEmpty($pids, "no connection named {$name}");
        foreach ($pids as $pid) {
            exec('rabbitmqctl -q close_connection ' . escapeshellarg($pid) . " 'test: the broker drops the client' 2>&1", $out, $status);
            self::assertSame(0, $status, implode("\n", $out));
        }
    }
}
