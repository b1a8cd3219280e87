<?php

declare(strict_types=1);

namespace OperationRuns;

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Connection\AbstractConnection;
use PhpAmqpLib\Exception\AMQPIOException;
use PhpAmqpLib\Exception\AMQPProtocolChannelException;
use PhpAmqpLib\Exception\AMQPRuntimeException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

/**
 * Sends commands to the operation-runs service and waits for its replies.
 *
 * Every command is published to exchange `N.commands` with routing key = its kind, with publisher
 * confirms and `mandatory` (an undeclared topology is an error, never a silent drop), as a
 * persistent `application/json` message whose `message_id` is the command id; the reply comes
 * through RabbitMQ direct reply-to (`amq.rabbitmq.reply-to`). Command ids are UUIDs generated
 * here unless given; resending the same id is applied at most once by the service.
 *
 * `$amqpUrl` is one URL, a comma-separated list of the nodes of a cluster (as the service's
 * `AMQP_URL`), or an array of URLs: the first that answers is used, and after a lost connection
 * the next one is tried first. A call whose connection is lost is sent once more on a fresh
 * connection (the command id makes it safe); else {@see CommandNotAnswered} `connection_lost`.
 * No error carries a password. `$connectionName` is the name the broker shows for the connection.
 *
 * `$viewerUrl` (the run viewer's base URL, e.g. `https://runs.example.com`) and `$viewerSecret`
 * (the `--api-secret` the viewer is started with, at least 32 bytes) let {@see viewUrl()} mint
 * "View run" links; neither is needed for commands.
 *
 * One instance holds one connection and one channel: use it from one process (one PHP worker).
 */
final class OperationRunService
{
    public const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';
    public const DEFAULT_TIMEOUT = 30.0;

    private AmqpNodes $nodes;
    private int $node = 0;
    private ?AbstractConnection $connection = null;
    private ?AMQPChannel $channel = null;
    /** @var array<string, array<string, mixed>> replies by correlation id */
    private array $replies = [];
    private bool $returned = false;
    private string $awaiting = '';
    private bool $nacked = false;

    /**
     * @param string|list<string> $amqpUrl
     * @throws \InvalidArgumentException an empty or oversized list, or a URL not amqp:// or amqps://
     */
    public function __construct(
        #[\SensitiveParameter] string|array $amqpUrl,
        private readonly string $namespace = 'operation_runs',
        string $connectionName = AmqpUrl::DEFAULT_CONNECTION_NAME,
        private readonly ?string $viewerUrl = null,
        #[\SensitiveParameter] private readonly ?string $viewerSecret = null,
    ) {
        $this->nodes = new AmqpNodes($amqpUrl, $connectionName);
        if ($viewerSecret !== null && strlen($viewerSecret) < self::MIN_VIEWER_SECRET_BYTES) {
            throw new \InvalidArgumentException('the viewer secret must be at least 32 bytes');
        }
    }

    /** The viewer refuses a shorter HS256 secret. */
    public const MIN_VIEWER_SECRET_BYTES = 32;

    /**
     * A "View run" link: the viewer's page of run `$runId`, signed in by a token (HS256, signed
     * with the viewer secret) that reads that one run only, for `$ttlSeconds`. `$workspaceId` and
     * `$tenantIds` are the run's scope as the platform knows it (`null`: the whole workspace);
     * a run outside them is "not found" for the link, so the link can never show another
     * tenant's run.
     *
     * @param list<int>|null $tenantIds
     * @throws \LogicException when the service was built without a viewer URL and secret
     * @throws \InvalidArgumentException when `$ttlSeconds` is not positive
     */
    public function viewUrl(int $runId, int $workspaceId, ?array $tenantIds = null, int $ttlSeconds = 3600): string
    {
        $token = $this->viewToken($runId, $workspaceId, $tenantIds, $ttlSeconds);
        return $this->viewerBase() . '/runs/' . $runId . '?token=' . $token;
    }

    /**
     * The viewer's live stream of run `$runId` (`GET /v1/runs/{id}/live`, Server-Sent Events)
     * with a token in the URL that reads that one run only, for `$ttlSeconds`: what an
     * `EventSource` of a platform page opens (it cannot send a header). Scope as
     * {@see viewUrl()}; the viewer takes no other kind of token in the URL.
     *
     * @param list<int>|null $tenantIds
     * @throws \LogicException when the service was built without a viewer URL and secret
     * @throws \InvalidArgumentException when `$ttlSeconds` is not positive
     */
    public function liveUrl(int $runId, int $workspaceId, ?array $tenantIds = null, int $ttlSeconds = 900): string
    {
        $token = $this->viewToken($runId, $workspaceId, $tenantIds, $ttlSeconds);
        return $this->viewerBase() . '/v1/runs/' . $runId . '/live?token=' . $token;
    }

    /**
     * A viewer token (HS256, claims `workspace_id`, `tenant_ids`, `run_id`, `iat`, `exp`) that
     * reads run `$runId` only, for `$ttlSeconds`: as `Authorization: Bearer` it reads the run's
     * detail and events from the viewer's API. Scope as {@see viewUrl()}.
     *
     * @param list<int>|null $tenantIds
     * @throws \LogicException when the service was built without a viewer URL and secret
     * @throws \InvalidArgumentException when `$ttlSeconds` is not positive
     */
    public function viewToken(int $runId, int $workspaceId, ?array $tenantIds = null, int $ttlSeconds = 3600): string
    {
        if ($this->viewerUrl === null || $this->viewerSecret === null) {
            throw new \LogicException('viewUrl needs the viewer URL and secret (constructor viewerUrl, viewerSecret)');
        }
        if ($ttlSeconds < 1) {
            throw new \InvalidArgumentException('ttlSeconds must be positive');
        }
        $now = time();
        $claims = ['workspace_id' => $workspaceId];
        if ($tenantIds !== null) {
            $claims['tenant_ids'] = array_map('intval', array_values($tenantIds));
        }
        $claims += ['run_id' => $runId, 'iat' => $now, 'exp' => $now + $ttlSeconds];
        $b64 = static fn (string $bytes): string => rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
        $input = $b64('{"alg":"HS256","typ":"JWT"}') . '.' . $b64(json_encode($claims, JSON_THROW_ON_ERROR));
        return $input . '.' . $b64(hash_hmac('sha256', $input, $this->viewerSecret, true));
    }

    /** The viewer's base URL, without a trailing slash. */
    public function viewerBase(): string
    {
        if ($this->viewerUrl === null) {
            throw new \LogicException('no viewer URL is configured (constructor viewerUrl)');
        }
        return rtrim($this->viewerUrl, '/');
    }

    /**
     * Dispatches a run of `$type` (its wire name, or a case of a string-backed enum such as the
     * generated `OperationRunType`) and returns the run (new or the active one of its identity).
     *
     * @param array<string, mixed> $context the type's identity keys and anything else to keep
     * @param array{userId?: int, initiatorName?: string, commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @throws CommandRefused when the service refuses it (getErrorCode(): e.g. `missing_identity_key`)
     * @throws CommandNotAnswered when the broker cannot route it, no reply comes in time, or the
     *   connection is lost twice or cannot be had (`connection_lost`)
     */
    public function dispatchOrFail(
        string|\BackedEnum $type,
        int $workspaceId,
        ?int $tenantId,
        array $context,
        array $options = [],
    ): DispatchResult {
        $commandId = $options['commandId'] ?? self::newCommandId();
        $body = [
            'kind' => 'dispatch',
            'command_id' => $commandId,
            'workspace_id' => $workspaceId,
            'tenant_id' => $tenantId,
            'type' => $type instanceof \BackedEnum ? (string) $type->value : $type,
            'context' => self::object($context),
        ];
        if (isset($options['userId'])) {
            $body['user_id'] = (int) $options['userId'];
        }
        if (isset($options['initiatorName'])) {
            $body['initiator_name'] = (string) $options['initiatorName'];
        }
        $reply = $this->request($body, (float) ($options['timeout'] ?? self::DEFAULT_TIMEOUT), $options);
        return DispatchResult::fromReply($reply, $commandId);
    }

    /**
     * A state change (`status`: running|completed, `outcome`: succeeded|partially_succeeded|failed|
     * blocked|cancelled), with optional `summary_counts` increments and `failures`, in one transaction.
     *
     * @param array{status?: string, outcome?: string, summary_counts?: array<string, int>, failures?: list<array<string, mixed>>} $changes
     * @param array{commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @return array{run_id: int, status: string, outcome: string}
     */
    public function updateRun(int $runId, int $workspaceId, ?int $tenantId, array $changes, array $options = []): array
    {
        $allowed = ['status', 'outcome', 'summary_counts', 'failures'];
        $unknown = array_diff(array_keys($changes), $allowed);
        if ($unknown !== []) {
            throw new \InvalidArgumentException('unknown change(s): ' . implode(', ', $unknown));
        }
        if (isset($changes['summary_counts'])) {
            $changes['summary_counts'] = self::object($changes['summary_counts']);
        }
        return $this->progress('update_run', $runId, $workspaceId, $tenantId, $changes, $options);
    }

    /**
     * Appends failure entries (`code`, `message`, optional `reason_code`, `item`; at most 100).
     *
     * @param list<array<string, mixed>> $failures
     * @param array{commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @return array{run_id: int, status: string, outcome: string}
     */
    public function appendFailures(int $runId, int $workspaceId, ?int $tenantId, array $failures, array $options = []): array
    {
        return $this->progress('append_failures', $runId, $workspaceId, $tenantId, ['failures' => array_values($failures)], $options);
    }

    /**
     * Adds to summary counts (keys total processed succeeded failed skipped created updated
     * deleted items; non-negative integers).
     *
     * @param array<string, int> $counts
     * @param array{commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @return array{run_id: int, status: string, outcome: string}
     */
    public function incrementSummaryCounts(int $runId, int $workspaceId, ?int $tenantId, array $counts, array $options = []): array
    {
        return $this->progress('increment_summary_counts', $runId, $workspaceId, $tenantId, ['counts' => self::object($counts)], $options);
    }

    /**
     * Cancels a run: a queued run completes `cancelled` at once (`done`); a running run's
     * executor is asked to stop (`requested`); a completed run is never changed (`unchanged` when
     * already cancelled, else `refused`).
     *
     * @param array{userId?: int, initiatorName?: string, commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @throws CommandRefused `run_not_found` for a run outside this workspace and tenant
     * @throws CommandNotAnswered as for every command
     */
    public function cancel(int $runId, int $workspaceId, ?int $tenantId, ?string $reason = null, array $options = []): ActionResult
    {
        return $this->act('cancel_run', $runId, $workspaceId, $tenantId, $reason, $options);
    }

    /**
     * Retries a run completed `failed`, `partially_succeeded`, `blocked` or `cancelled`: a new run
     * of the same type, scope and context with `context.retry_of`, dispatched as usual (`done`,
     * `$newRunId`; `$deduplicated` when an active run already held the identity).
     *
     * @param array{userId?: int, initiatorName?: string, commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @throws CommandRefused `run_not_found` for a run outside this workspace and tenant
     * @throws CommandNotAnswered as for every command
     */
    public function retry(int $runId, int $workspaceId, ?int $tenantId, ?string $reason = null, array $options = []): ActionResult
    {
        return $this->act('retry_run', $runId, $workspaceId, $tenantId, $reason, $options);
    }

    /**
     * Completes a queued or running run `failed` (failure code `run.failed_by_operator`, message
     * `$reason`), for a run whose executor is gone.
     *
     * @param array{userId?: int, initiatorName?: string, commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @throws CommandRefused `run_not_found` for a run outside this workspace and tenant
     * @throws CommandNotAnswered as for every command
     */
    public function fail(int $runId, int $workspaceId, ?int $tenantId, string $reason, array $options = []): ActionResult
    {
        return $this->act('fail_run', $runId, $workspaceId, $tenantId, $reason, $options);
    }

    /** Closes the channel and the connection (also done on destruction). */
    public function close(): void
    {
        // Each on its own: a channel that cannot close must not leave its connection's socket open.
        try {
            $this->channel?->close();
        } catch (\Throwable) {
            // A closed or broken channel: its connection is closed next.
        }
        try {
            $this->connection?->close();
        } catch (\Throwable) {
            // Closing a broken connection: nothing left to release.
        }
        $this->channel = null;
        $this->connection = null;
    }

    /** The connection is lost: release it, and start the next one with the following node. */
    private function drop(): void
    {
        $this->nodes->lost($this->node);
        $this->close();
    }

    public function __destruct()
    {
        $this->close();
    }

    /** A new command id (UUID v4). */
    public static function newCommandId(): string
    {
        $bytes = random_bytes(16);
        $bytes[6] = chr((ord($bytes[6]) & 0x0f) | 0x40);
        $bytes[8] = chr((ord($bytes[8]) & 0x3f) | 0x80);
        return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($bytes), 4));
    }

    /**
     * @param array<string, mixed> $fields
     * @param array{commandId?: string, timeout?: float, traceparent?: string, tracestate?: string} $options
     * @return array<string, mixed>
     */
    private function progress(string $kind, int $runId, int $workspaceId, ?int $tenantId, array $fields, array $options): array
    {
        $body = [
            'kind' => $kind,
            'command_id' => $options['commandId'] ?? self::newCommandId(),
            'run_id' => $runId,
            'workspace_id' => $workspaceId,
            // Always present: null marks a workspace-scoped run.
            'tenant_id' => $tenantId,
        ] + $fields;
        return $this->request($body, (float) ($options['timeout'] ?? self::DEFAULT_TIMEOUT), $options);
    }

    /**
     * @param array<string, mixed> $options
     */
    private function act(string $kind, int $runId, int $workspaceId, ?int $tenantId, ?string $reason, array $options): ActionResult
    {
        $fields = ['reason' => $reason];
        if (isset($options['userId'])) {
            $fields['user_id'] = (int) $options['userId'];
        }
        if (isset($options['initiatorName'])) {
            $fields['initiator_name'] = (string) $options['initiatorName'];
        }
        $options['commandId'] ??= self::newCommandId();
        $reply = $this->progress($kind, $runId, $workspaceId, $tenantId, $fields, $options);
        return ActionResult::fromReply($reply, (string) $options['commandId']);
    }

    /**
     * A new W3C `traceparent` (version 00, random trace and parent ids, sampled), for a producer
     * that starts the trace itself and wants to know its id. Without one, the service starts a
     * trace for each dispatch.
     */
    public static function newTraceparent(): string
    {
        return sprintf('00-%s-%s-01', bin2hex(random_bytes(16)), bin2hex(random_bytes(8)));
    }

    /**
     * Publishes `$body` (confirmed, mandatory) and waits for its reply. `traceparent` and
     * `tracestate` options become AMQP headers (W3C trace context).
     *
     * @param array<string, mixed> $body
     * @param array<string, mixed> $options
     * @return array<string, mixed>
     */
    private function request(array $body, float $timeout, array $options = []): array
    {
        $commandId = (string) $body['command_id'];
        $lost = null;
        // Once, and once more on a fresh connection when the connection was lost: the service
        // applies a command id at most once and replies its first result again.
        for ($attempt = 0; $attempt < 2; $attempt++) {
            try {
                return $this->attempt($this->channel(), $body, $timeout, $options);
            } catch (NoNodeAnswered $e) {
                $before = $lost !== null ? 'the connection was lost (' . AmqpUrl::describe($lost) . ') and ' : '';
                throw new CommandNotAnswered(
                    CommandNotAnswered::CONNECTION_LOST,
                    $commandId,
                    "command {$commandId} is not answered: {$before}{$e->getMessage()}; retry with the same command id",
                );
            } catch (AMQPRuntimeException | AMQPIOException $e) {
                // A closed connection or channel, a broken pipe, a missed heartbeat: gone.
                $this->drop();
                $lost = $e;
            }
        }
        throw new CommandNotAnswered(
            CommandNotAnswered::CONNECTION_LOST,
            $commandId,
            "command {$commandId} is not answered: the connection was lost, and again on a fresh connection ("
                . AmqpUrl::describe($lost) . '); retry with the same command id',
        );
    }

    /**
     * One publish of `$body` and the wait for its reply, on `$channel`.
     *
     * @param array<string, mixed> $body
     * @param array<string, mixed> $options
     * @return array<string, mixed>
     */
    private function attempt(AMQPChannel $channel, array $body, float $timeout, array $options): array
    {
        $commandId = (string) $body['command_id'];
        $correlationId = self::newCommandId();
        $message = new AMQPMessage(
            json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION),
            [
                'content_type' => 'application/json',
                'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT,
                'message_id' => $commandId,
                'correlation_id' => $correlationId,
                'reply_to' => self::DIRECT_REPLY_TO,
            ],
        );
        if (isset($options['traceparent'])) {
            $headers = ['traceparent' => (string) $options['traceparent']];
            if (isset($options['tracestate'])) {
                $headers['tracestate'] = (string) $options['tracestate'];
            }
            $message->set('application_headers', new AMQPTable($headers));
        }
        $this->returned = false;
        $this->nacked = false;
        $this->awaiting = $correlationId;
        $this->replies = [];
        try {
            $channel->basic_publish($message, $this->namespace . '.commands', (string) $body['kind'], true);
            $channel->wait_for_pending_acks_returns($timeout);
        } catch (AMQPProtocolChannelException $e) {
            // The broker closed the channel: 404 when the exchange does not exist at all.
            $this->channel = null;
            if ($e->getCode() === 404) {
                throw new CommandNotAnswered(
                    CommandNotAnswered::UNROUTABLE,
                    $commandId,
                    "command {$commandId} is unroutable: exchange {$this->namespace}.commands does not exist",
                );
            }
            throw $e;
        } catch (AMQPTimeoutException) {
            throw new CommandNotAnswered(CommandNotAnswered::TIMEOUT, $commandId, "no publisher confirm for command {$commandId} within {$timeout} s");
        }
        if ($this->returned) {
            throw new CommandNotAnswered(
                CommandNotAnswered::UNROUTABLE,
                $commandId,
                "command {$commandId} is unroutable: is the topology of namespace {$this->namespace} declared?",
            );
        }
        if ($this->nacked) {
            throw new CommandNotAnswered(CommandNotAnswered::NACKED, $commandId, "the broker refused command {$commandId} (nack)");
        }
        $deadline = microtime(true) + $timeout;
        while (!isset($this->replies[$correlationId])) {
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                throw new CommandNotAnswered(CommandNotAnswered::TIMEOUT, $commandId, "no reply to command {$commandId} within {$timeout} s");
            }
            try {
                $channel->wait(null, false, $left);
            } catch (AMQPTimeoutException) {
                // Loop: the deadline decides.
            }
        }
        $reply = $this->replies[$correlationId];
        unset($this->replies[$correlationId]);
        // A refusal's `error` is {code, message}; an action result's is its text (no refusal).
        if (isset($reply['error']) && is_array($reply['error'])) {
            throw new CommandRefused((string) ($reply['error']['code'] ?? 'unknown'), (string) ($reply['error']['message'] ?? ''));
        }
        return $reply;
    }

    private function channel(): AMQPChannel
    {
        if ($this->channel !== null && $this->channel->is_open()) {
            return $this->channel;
        }
        // A channel the broker closed (e.g. 404) leaves its connection open: release it first.
        $this->close();
        [$this->connection, $this->node] = $this->nodes->connect();
        $channel = $this->connection->channel();
        $channel->confirm_select();
        $channel->set_ack_handler(function (): void {
        });
        $channel->set_nack_handler(function (): void {
            $this->nacked = true;
        });
        $channel->set_return_listener(function (): void {
            $this->returned = true;
        });
        // Direct reply-to: consume the pseudo-queue (no-ack) before publishing from this channel.
        $channel->basic_consume(self::DIRECT_REPLY_TO, '', false, true, false, false, function (AMQPMessage $reply): void {
            $correlationId = $reply->has('correlation_id') ? (string) $reply->get('correlation_id') : '';
            // Keep only the reply awaited now: a late reply to a timed-out request is dropped.
            if ($correlationId !== $this->awaiting) {
                return;
            }
            $this->replies[$correlationId] = json_decode($reply->getBody(), true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
        });
        return $this->channel = $channel;
    }

    /**
     * An associative array as a JSON object, even when empty (PHP encodes [] as a list).
     *
     * @param array<string, mixed> $value
     */
    private static function object(array $value): array|\stdClass
    {
        return $value === [] ? new \stdClass() : $value;
    }
}
