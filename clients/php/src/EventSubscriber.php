<?php

declare(strict_types=1);

namespace OperationRuns;

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Connection\AbstractConnection;
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
 */
final class EventSubscriber
{
    private AbstractConnection $connection;
    private AMQPChannel $channel;
    private string $queue;
    /** @var list<AMQPMessage> */
    private array $buffer = [];
    private ?AMQPMessage $unacked = null;

    public function __construct(string $amqpUrl, string $namespace = 'operation_runs', ?string $queue = null, int $prefetch = 100)
    {
        $this->connection = AmqpUrl::connect($amqpUrl);
        $this->channel = $this->connection->channel();
        if ($queue === null) {
            [$this->queue] = $this->channel->queue_declare('', false, false, true, true);
        } else {
            $this->channel->queue_declare($queue, false, true, false, false, false, new AMQPTable(['x-queue-type' => 'quorum']));
            $this->queue = $queue;
        }
        $this->channel->queue_bind($this->queue, $namespace . '.events');
        $this->channel->basic_qos(0, $prefetch, false);
        $this->channel->basic_consume($this->queue, '', false, false, false, false, function (AMQPMessage $m): void {
            $this->buffer[] = $m;
        });
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
     */
    public function events(?float $idleTimeout = null): \Generator
    {
        while (true) {
            // The consumer came back for more: the event it had is handled.
            $this->unacked?->ack();
            $this->unacked = null;
            if ($this->buffer === []) {
                try {
                    $this->channel->wait(null, false, $idleTimeout ?? 0);
                } catch (AMQPTimeoutException) {
                    return;
                }
                continue;
            }
            $message = array_shift($this->buffer);
            try {
                $event = json_decode($message->getBody(), true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
            } catch (\JsonException) {
                // Not an event of this service: nothing a consumer could do with it.
                $message->nack(false);
                continue;
            }
            $this->unacked = $message;
            yield $event;
        }
    }

    public function close(): void
    {
        try {
            $this->channel->close();
            $this->connection->close();
        } catch (\Throwable) {
            // Already closed or broken.
        }
    }
}
