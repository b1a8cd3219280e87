<?php

declare(strict_types=1);

namespace OperationRuns;

use PhpAmqpLib\Connection\AbstractConnection;

/**
 * @internal The URLs of one broker (the nodes of a cluster) and where to start: the first that
 * answers is used; after a lost connection the next one is tried first, so a dead node is tried
 * last (as the service).
 */
final class AmqpNodes
{
    /** @var list<string> */
    private array $urls;
    private int $start = 0;

    /** @param string|list<string> $urls */
    public function __construct(#[\SensitiveParameter] string|array $urls, private readonly string $connectionName)
    {
        $this->urls = AmqpUrl::parseList($urls);
    }

    /**
     * A connection to the first node that answers, and that node's index.
     *
     * @return array{AbstractConnection, int}
     * @throws NoNodeAnswered with a redacted message
     */
    public function connect(): array
    {
        $failures = [];
        $n = count($this->urls);
        for ($k = 0; $k < $n; $k++) {
            $i = ($this->start + $k) % $n;
            try {
                $connection = AmqpUrl::open($this->urls[$i], $this->connectionName);
            } catch (\Throwable $e) {
                // The library's exception is not chained: its trace holds the password.
                $failures[] = AmqpUrl::redact($this->urls[$i]) . ' (' . AmqpUrl::describe($e) . ')';
                continue;
            }
            $this->start = $i;
            return [$connection, $i];
        }
        throw new NoNodeAnswered('no broker node answered: ' . implode('; ', $failures));
    }

    /** The connection to `$node` was lost: the next attempt starts with the following one. */
    public function lost(int $node): void
    {
        $this->start = ($node + 1) % count($this->urls);
    }

    /** @return array<string, string> never the URLs (var_dump, print_r, debug traces) */
    public function __debugInfo(): array
    {
        return ['urls' => AmqpUrl::redact(implode(',', $this->urls))];
    }
}
