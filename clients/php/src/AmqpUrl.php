<?php

declare(strict_types=1);

namespace OperationRuns;

use PhpAmqpLib\Connection\AbstractConnection;
use PhpAmqpLib\Connection\AMQPSSLConnection;
use PhpAmqpLib\Connection\AMQPStreamConnection;

/** Opens a connection from an AMQP URI (`amqp://user:pass@host:5672/%2f`; `amqps://` for TLS). */
final class AmqpUrl
{
    public static function connect(string $url): AbstractConnection
    {
        $parts = parse_url($url);
        if ($parts === false || !isset($parts['scheme'], $parts['host'])) {
            // Never echo the URL: it holds the password.
            throw new \InvalidArgumentException('not an AMQP URL (amqp://user:pass@host:port/vhost)');
        }
        $tls = $parts['scheme'] === 'amqps';
        if (!$tls && $parts['scheme'] !== 'amqp') {
            throw new \InvalidArgumentException("unsupported scheme {$parts['scheme']}: use amqp or amqps");
        }
        $host = $parts['host'];
        $port = $parts['port'] ?? ($tls ? 5671 : 5672);
        $user = isset($parts['user']) ? rawurldecode($parts['user']) : 'guest';
        $password = isset($parts['pass']) ? rawurldecode($parts['pass']) : 'guest';
        $path = $parts['path'] ?? '';
        $vhost = ($path === '' || $path === '/') ? '/' : rawurldecode(substr($path, 1));
        if ($tls) {
            return new AMQPSSLConnection($host, $port, $user, $password, $vhost, ['verify_peer' => true]);
        }
        return new AMQPStreamConnection(
            $host,
            $port,
            $user,
            $password,
            $vhost,
            false,
            'AMQPLAIN',
            null,
            'en_US',
            10.0,
            30.0,
        );
    }
}
