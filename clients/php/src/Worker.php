<?php

declare(strict_types=1);

namespace OperationRuns;

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Connection\AbstractConnection;
use PhpAmqpLib\Exception\AMQPIOException;
use PhpAmqpLib\Exception\AMQPRuntimeException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

/**
 * An executor: receives the jobs of chosen run types (the service's hand-off on `N.jobs`), runs a
 * handler for each with a {@see RunHandle}, and completes the run. The same promises as the Rust
 * `operation_runs::client::Worker` (docs/workers.md):
 *
 * - **A job is acked only after the service answered its completion.** Start and completion wait
 *   for the service's reply; a job redelivered after a crash whose run is already completed (the
 *   start's reply says so) is acked without running the handler again.
 * - **No reply is not an answer.** A start or completion the service does not answer in time is
 *   sent again with the same command id (applied once) with backoff (0.1 s doubling to 10 s) until
 *   it answers or {@see stop()}; the job stays unacked meanwhile.
 * - **A refusal never strands the run.** A refused completion completes the run `failed` with
 *   `worker.completion_refused`, a refused start with `worker.start_refused` (`run_not_found`:
 *   acked, nothing to fail), an undecodable job that names its run with `worker.invalid_job`
 *   (one that names none is rejected); a handler that throws completes it `failed` with
 *   `worker.handler_failed` (the exception's class and message).
 * - **A cancel reaches the handler.** Each instance reads a queue of its own,
 *   `N.worker.<name>.cancel.<id>` (exclusive, at most 1,024 messages), bound with
 *   `cancel.<type>`: {@see RunHandle::cancelRequested()} reads it (at most every 0.2 s), and it is
 *   read before each job, so a job whose cancel came first completes `cancelled` without running
 *   the handler. A queued run's cancel completes it at once in the service; its job is then acked
 *   unrun (see above).
 * - **Broker faults are survived.** A lost connection is opened again (the next node first) with
 *   backoff; the job in hand is redelivered by the broker.
 *
 * One job at a time (prefetch 1): run more processes to execute more at once. The connection has
 * no heartbeats unless the URL asks (`?heartbeat=N`; then call the handle often enough).
 */
final class Worker
{
    public const COMPLETION_REFUSED = 'worker.completion_refused';
    public const START_REFUSED = 'worker.start_refused';
    public const INVALID_JOB = 'worker.invalid_job';
    public const HANDLER_FAILED = 'worker.handler_failed';
    /** Most cancels its queue holds (the newest kept) and that it remembers for runs not in hand. */
    public const HEARD_CANCELS = 1024;
    /** Seconds between two reads of the cancel queue from {@see RunHandle::cancelRequested()}. */
    public const CANCEL_POLL_INTERVAL = 0.2;

    private AmqpNodes $nodes;
    private OperationRunService $service;
    private string $queue;
    private int $node = 0;
    private ?AbstractConnection $connection = null;
    private ?AMQPChannel $jobs = null;
    private ?AMQPChannel $cancels = null;
    private string $cancelQueue = '';
    private ?AMQPMessage $delivery = null;
    private ?RunHandle $inHand = null;
    /** @var array<int, true> cancels of runs not in hand, oldest first */
    private array $heard = [];
    private float $lastPoll = 0.0;
    private bool $stopping = false;

    /**
     * @param string|list<string> $amqpUrl as {@see OperationRunService}
     * @param list<string> $types the run types it executes
     * @param OperationRunService|null $service what it reports with (default: one of its own)
     */
    public function __construct(
        #[\SensitiveParameter] string|array $amqpUrl,
        private readonly string $namespace,
        string $name,
        private readonly array $types,
        ?OperationRunService $service = null,
        private readonly float $replyTimeout = OperationRunService::DEFAULT_TIMEOUT,
        private readonly string $connectionName = 'operation-runs-php-worker',
    ) {
        if ($types === []) {
            throw new \InvalidArgumentException('a worker executes at least one type');
        }
        $this->nodes = new AmqpNodes($amqpUrl, $connectionName);
        $this->service = $service ?? new OperationRunService($amqpUrl, $namespace, $connectionName . ' producer');
        $this->queue = self::queueName($namespace, $name);
    }

    /** The durable job queue of a worker named `$name`: `N.worker.<name>`. */
    public static function queueName(string $namespace, string $name): string
    {
        return "{$namespace}.worker.{$name}";
    }

    /** This worker's job queue. */
    public function queue(): string
    {
        return $this->queue;
    }

    /**
     * Connects and declares its queues now (also done by {@see run()}): jobs handed off from then
     * on wait in the durable job queue, even while no worker runs.
     *
     * @throws NoNodeAnswered when no node answers
     */
    public function declare(): void
    {
        $this->open();
    }

    /**
     * Executes jobs: `$handler(RunHandle $run): ?string` returns the outcome (see RunHandle).
     * Returns the number of jobs settled, after `$maxJobs` of them, after `$idleTimeout` seconds
     * without a job, or once {@see stop()} was called (from the handler or a signal handler):
     * a job whose completion was not answered yet is left to the broker to redeliver.
     *
     * @param callable(RunHandle): ?string $handler
     */
    public function run(callable $handler, ?int $maxJobs = null, ?float $idleTimeout = null): int
    {
        $this->stopping = false;
        $settled = 0;
        $delay = 0.1;
        while (!$this->stopping && ($maxJobs === null || $settled < $maxJobs)) {
            try {
                $this->open();
                if ($this->delivery === null) {
                    try {
                        $this->jobs->wait(null, false, $idleTimeout ?? 0);
                    } catch (AMQPTimeoutException) {
                        break;
                    }
                    if (!$this->jobs->is_consuming()) {
                        throw new AMQPRuntimeException('the broker cancelled the job consumer');
                    }
                    continue;
                }
                [$message, $this->delivery] = [$this->delivery, null];
                if (!$this->handle($handler, $message)) {
                    break;
                }
                $settled++;
                $delay = 0.1;
            } catch (AMQPRuntimeException | AMQPIOException | NoNodeAnswered $e) {
                // Lost: the job in hand (if any) is redelivered by the broker.
                $this->drop();
                error_log("operation-runs worker {$this->queue}: lost the broker (" . AmqpUrl::describe($e) . "), reconnecting in {$delay} s");
                self::sleep($delay);
                $delay = min(10.0, 2 * $delay);
            }
        }
        return $settled;
    }

    /** Stops {@see run()} after the job in hand (or at once while it waits for the service). */
    public function stop(): void
    {
        $this->stopping = true;
    }

    /** Closes its connections (the exclusive cancel queue goes with them). */
    public function close(): void
    {
        $this->drop();
        $this->service->close();
    }

    public function __destruct()
    {
        $this->drop();
    }

    /** One job: start, handler, completion, ack. False when stop() interrupted it (unacked). */
    private function handle(callable $handler, AMQPMessage $message): bool
    {
        $job = json_decode($message->getBody(), true, 512, JSON_BIGINT_AS_STRING);
        $scope = is_array($job) && is_int($job['run_id'] ?? null) && is_int($job['workspace_id'] ?? null)
            && array_key_exists('tenant_id', $job) && ($job['tenant_id'] === null || is_int($job['tenant_id']));
        if (!$scope) {
            error_log("operation-runs worker {$this->queue}: a job that names no run, rejecting it");
            $message->nack(false);
            return true;
        }
        [$runId, $workspaceId, $tenantId] = [$job['run_id'], $job['workspace_id'], $job['tenant_id']];
        if (!is_string($job['type'] ?? null) || !is_array($job['context'] ?? null)) {
            return $this->settle($message, $this->failRun($runId, $workspaceId, $tenantId, self::INVALID_JOB, null, 'the job does not decode: type or context missing'));
        }
        $run = new RunHandle($runId, $job['type'], $workspaceId, $tenantId, $job['context'], $this->service, fn (): bool => $this->heard($runId), $this->replyTimeout);
        // In hand before the start is sent: a cancel that comes meanwhile is not missed.
        $this->inHand = $run;
        try {
            $this->pollCancels();
            $once = $this->once();
            $started = $this->answer(fn (): array => $this->service->updateRun($runId, $workspaceId, $tenantId, ['status' => 'running'], $once));
            if ($started === null) {
                return false;
            }
            if ($started[0] === 'applied' && ($started[1]['status'] ?? '') === 'completed') {
                // A redelivered job whose completion was applied before (or a cancelled queued run).
                return $this->settle($message, true);
            }
            if ($started[0] === 'refused') {
                if ($started[1] === 'run_not_found') {
                    error_log("operation-runs worker {$this->queue}: run {$runId} does not exist in its scope; acking its job");
                    return $this->settle($message, true);
                }
                return $this->settle($message, $this->failRun($runId, $workspaceId, $tenantId, self::START_REFUSED, $started[1], $started[2]));
            }
            $this->pollCancels();
            if ($run->isCancelled()) {
                $outcome = 'cancelled';
            } else {
                try {
                    $outcome = $run->outcome($handler($run));
                } catch (\Throwable $e) {
                    $run->fail(self::HANDLER_FAILED, RunHandle::printable(AmqpUrl::describe($e)));
                    $outcome = 'failed';
                }
            }
            $failures = $run->takeFailures();
            $changes = ['status' => 'completed', 'outcome' => $outcome] + ($failures === [] ? [] : ['failures' => $failures]);
            $once = $this->once();
            $done = $this->answer(fn (): array => $this->service->updateRun($runId, $workspaceId, $tenantId, $changes, $once));
            if ($done === null) {
                return false;
            }
            if ($done[0] === 'refused') {
                return $this->settle($message, $this->failRun($runId, $workspaceId, $tenantId, self::COMPLETION_REFUSED, $done[1], $done[2]));
            }
            return $this->settle($message, true);
        } finally {
            $this->inHand = null;
        }
    }

    /** Acks `$message` when `$answered`; false (left unacked) otherwise. */
    private function settle(AMQPMessage $message, bool $answered): bool
    {
        if ($answered) {
            $message->ack();
        }
        return $answered;
    }

    /**
     * Completes the run `failed` with one failure the service accepts; true once answered
     * (applied, or refused too: a refusal is deterministic, requeueing would loop).
     */
    private function failRun(int $runId, int $workspaceId, ?int $tenantId, string $code, ?string $refusalCode, string $message): bool
    {
        $failure = ['code' => $code, 'message' => RunHandle::printable($message)];
        if ($refusalCode !== null && preg_match('/^[A-Za-z0-9_.-]{1,128}$/', $refusalCode) === 1) {
            $failure['reason_code'] = $refusalCode;
        }
        error_log("operation-runs worker {$this->queue}: completing run {$runId} as failed ({$code}: {$failure['message']})");
        $changes = ['status' => 'completed', 'outcome' => 'failed', 'failures' => [$failure]];
        $once = $this->once();
        $answer = $this->answer(fn (): array => $this->service->updateRun($runId, $workspaceId, $tenantId, $changes, $once));
        if ($answer !== null && $answer[0] === 'refused') {
            error_log("operation-runs worker {$this->queue}: failing run {$runId} was refused too ({$answer[2]}); acking its job");
        }
        return $answer !== null;
    }

    /**
     * Calls `$send` until the service answers: `['applied', reply]` or `['refused', code,
     * message]`; null when stop() came first. Each call of `$send` resends the same command id.
     *
     * @param \Closure(): array<string, mixed> $send
     * @return array{0: string, 1: mixed, 2?: string}|null
     */
    private function answer(\Closure $send): ?array
    {
        $delay = 0.1;
        while (true) {
            try {
                return ['applied', $send()];
            } catch (CommandRefused $e) {
                $prefix = $e->getErrorCode() . ': ';
                $text = str_starts_with($e->getMessage(), $prefix) ? substr($e->getMessage(), strlen($prefix)) : $e->getMessage();
                return ['refused', $e->getErrorCode(), $text];
            } catch (CommandNotAnswered $e) {
                if ($this->stopping) {
                    return null;
                }
                error_log("operation-runs worker {$this->queue}: {$e->getMessage()}; sending it again in {$delay} s");
                self::sleep($delay);
                $delay = min(10.0, 2 * $delay);
                if ($this->stopping) {
                    return null;
                }
            }
        }
    }

    /**
     * Options of one command (its resends share the id).
     *
     * @return array{commandId: string, timeout: float}
     */
    private function once(): array
    {
        return ['commandId' => OperationRunService::newCommandId(), 'timeout' => $this->replyTimeout];
    }

    /** Whether run `$runId`'s cancel has come, reading the cancel queue at most every 0.2 s. */
    private function heard(int $runId): bool
    {
        if (microtime(true) - $this->lastPoll >= self::CANCEL_POLL_INTERVAL) {
            try {
                $this->pollCancels();
            } catch (AMQPRuntimeException | AMQPIOException) {
                // Lost: the job loop reconnects after this job; the cancel is not known yet.
            }
        }
        return $this->inHand?->runId === $runId && $this->inHand->isCancelled();
    }

    /** Reads every waiting cancel: the run in hand is told, others are remembered. */
    private function pollCancels(): void
    {
        $this->lastPoll = microtime(true);
        while (($message = $this->cancels?->basic_get($this->cancelQueue, true)) !== null) {
            $notice = json_decode($message->getBody(), true);
            if (!is_array($notice) || ($notice['cancel'] ?? false) !== true || !is_int($notice['run_id'] ?? null)) {
                continue;
            }
            $runId = $notice['run_id'];
            if ($this->inHand?->runId === $runId) {
                $this->inHand->markCancelled();
                continue;
            }
            unset($this->heard[$runId]);
            $this->heard[$runId] = true;
            if (count($this->heard) > self::HEARD_CANCELS) {
                unset($this->heard[array_key_first($this->heard)]);
            }
        }
        if ($this->inHand !== null && isset($this->heard[$this->inHand->runId])) {
            unset($this->heard[$this->inHand->runId]);
            $this->inHand->markCancelled();
        }
    }

    /** Connects and declares, unless connected. */
    private function open(): void
    {
        if ($this->connection !== null && $this->connection->isConnected()) {
            return;
        }
        $this->drop();
        [$this->connection, $this->node] = $this->nodes->connect();
        $jobs = $this->connection->channel();
        $exchange = "{$this->namespace}.jobs";
        // The same arguments as the service's declaration, so either may start first.
        $jobs->exchange_declare($exchange, 'topic', false, true, false);
        $jobs->queue_declare($this->queue, false, true, false, false, false, new AMQPTable(['x-queue-type' => 'quorum']));
        foreach ($this->types as $type) {
            $jobs->queue_bind($this->queue, $exchange, $type);
        }
        $cancels = $this->connection->channel();
        $this->cancelQueue = "{$this->queue}.cancel." . bin2hex(random_bytes(16));
        $cancels->queue_declare($this->cancelQueue, false, false, true, true, false, new AMQPTable(['x-max-length' => self::HEARD_CANCELS]));
        foreach ($this->types as $type) {
            $cancels->queue_bind($this->cancelQueue, $exchange, "cancel.{$type}");
        }
        // One job at a time: the others stay in the queue for other instances.
        $jobs->basic_qos(0, 1, false);
        $jobs->basic_consume($this->queue, '', false, false, false, false, function (AMQPMessage $message): void {
            $this->delivery = $message;
        });
        [$this->jobs, $this->cancels] = [$jobs, $cancels];
    }

    /** Releases the connection (the next starts with the following node). */
    private function drop(): void
    {
        if ($this->connection === null) {
            return;
        }
        $this->nodes->lost($this->node);
        try {
            $this->connection->close();
        } catch (\Throwable) {
            // Closing a broken connection: nothing left to release.
        }
        [$this->connection, $this->jobs, $this->cancels, $this->delivery] = [null, null, null, null];
    }

    private static function sleep(float $seconds): void
    {
        usleep((int) ($seconds * (0.5 + lcg_value() / 2) * 1_000_000));
    }
}
