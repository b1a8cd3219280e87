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
 * Receives the service's events (CloudEvents JSON, event.json) from a queue of its own bound to
 * the fanout exchange `N.events`.
 *
 * With a queue name (by least privilege `N.subscriber.<name>`) the queue is durable and keeps
 * events while the subscriber is away; without one the broker names an exclusive queue that lives
 * as long as this object. Delivery is at least once: an event is acked when the consumer asks for
 * the next one, so dedupe on the event `id`; order per run by `data.sequence`.
 *
 * `$amqpUrl` is one URL, a comma-separated list or an array (the first that answers). A lost
 * connection of a named queue is resumed on a fresh one (to the next node first); events not
 * acked come again. {@see ConnectionLost} when it cannot be (see there).
 */
final class EventSubscriber
{
    private AmqpNodes $nodes;
    /** The durable queue's name; null for an exclusive one. */
    private ?string $named;
    private int $node = 0;
    private ?AbstractConnection $connection = null;
    private ?AMQPChannel $channel = null;
    private string $queue = '';
    /** @var list<AMQPMessage> */
    private array $buffer = [];
    private ?AMQPMessage $unacked = null;

    /**
     * @param string|list<string> $amqpUrl
     * @throws ConnectionLost when no node of the list answers
     */
    public function __construct(
        #[\SensitiveParameter] string|array $amqpUrl,
        private readonly string $namespace = 'operation_runs',
        ?string $queue = null,
        private readonly int $prefetch = 100,
        string $connectionName = AmqpUrl::DEFAULT_CONNECTION_NAME,
    ) {
        $this->named = $queue;
        $this->nodes = new AmqpNodes($amqpUrl, $connectionName);
        $this->subscribe();
    }

    /** The queue's name (broker-generated when none was given). */
    public function queueName(): string
    {
        return $this->queue;
    }

    /**
     * Yields decoded events as they arrive. Each is acked when the loop asks for the next one (also
     * through a later call of events()); an event whose handling threw is not acked and comes
     * again after close(). Stops after `$idleTimeout` seconds without an event (null: never).
     *
     * @return \Generator<int, array<string, mixed>>
     * @throws ConnectionLost when the connection is lost and cannot be resumed
     */
    public function events(?float $idleTimeout = null): \Generator
    {
        $resumed = false;
        $delivered = false;
        while (true) {
            try {
                // The consumer came back for more: the event it had is handled.
                $handled = $this->unacked;
                $this->unacked = null;
                $handled?->ack();
                if ($this->buffer === []) {
                    try {
                        $this->channel->wait(null, false, $idleTimeout ?? 0);
                    } catch (AMQPTimeoutException) {
                        return;
                    }
                    continue;
                }
                $message = array_shift($this->buffer);
                $delivered = true;
                try {
                    $event = json_decode($message->getBody(), true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
                } catch (\JsonException) {
                    // Not an event of this service: nothing a consumer could do with it.
                    $message->nack(false);
                    continue;
                }
            } catch (AMQPRuntimeException | AMQPIOException $e) {
                // Lost: resumed once; lost again before an event came on the fresh one, it ends.
                $this->resume($e, $resumed && !$delivered);
                $resumed = true;
                $delivered = false;
                continue;
            }
            $this->unacked = $message;
            yield $event;
        }
    }

    public function close(): void
    {
        try {
            $this->channel?->close();
        } catch (\Throwable) {
            // Already closed or broken: the connection is closed next.
        }
        try {
            $this->connection?->close();
        } catch (\Throwable) {
            // Already closed or broken.
        }
        $this->channel = null;
        $this->connection = null;
    }

    private function subscribe(): void
    {
        try {
            [$this->connection, $this->node] = $this->nodes->connect();
        } catch (NoNodeAnswered $e) {
            throw new ConnectionLost("cannot subscribe to {$this->namespace}.events: {$e->getMessage()}");
        }
        $this->channel = $this->connection->channel();
        if ($this->named === null) {
            [$this->queue] = $this->channel->queue_declare('', false, false, true, true);
        } else {
            $this->channel->queue_declare($this->named, false, true, false, false, false, new AMQPTable(['x-queue-type' => 'quorum']));
            $this->queue = $this->named;
        }
        $this->channel->queue_bind($this->queue, $this->namespace . '.events');
        $this->channel->basic_qos(0, $this->prefetch, false);
        $this->channel->basic_consume($this->queue, '', false, false, false, false, function (AMQPMessage $m): void {
            $this->buffer[] = $m;
        });
    }

    private function resume(\Throwable $lost, bool $again): void
    {
        // Deliveries of the lost channel cannot be acked: the broker delivers them again.
        $this->buffer = [];
        $this->unacked = null;
        $this->close();
        $this->nodes->lost($this->node);
        $why = AmqpUrl::describe($lost);
        if ($this->named === null) {
            throw new ConnectionLost("the connection of the subscriber was lost ({$why}); its exclusive queue went with it");
        }
        if ($again) {
            throw new ConnectionLost("the connection of the subscriber to {$this->named} was lost again before an event came ({$why})");
        }
        try {
            $this->subscribe();
        } catch (AMQPRuntimeException | AMQPIOException $e) {
            $this->close();
            throw new ConnectionLost("the subscription to {$this->named} could not be resumed: " . AmqpUrl::describe($e));
        }
    }
}
