<?php

declare(strict_types=1);

namespace OperationRuns;

use PhpAmqpLib\Connection\AbstractConnection;
use PhpAmqpLib\Connection\AMQPConnectionConfig;
use PhpAmqpLib\Connection\AMQPConnectionFactory;

/**
 * AMQP URIs (`amqp://user:pass@host:5672/%2f`; `amqps://` for TLS): one, or the nodes of a
 * cluster as a comma-separated list or an array (as the service's `AMQP_URL`), and the
 * redaction of their passwords for every message this client makes.
 */
final class AmqpUrl
{
    /** Most URLs one list may hold (as the service). */
    public const MAX_URLS = 16;
    /** The client-provided connection name when none is given (shown by the broker). */
    public const DEFAULT_CONNECTION_NAME = 'operation-runs-php';
    /** Seconds one URL may take to accept a connection before the next is tried. */
    public const CONNECT_TIMEOUT = 10.0;
    /** Seconds a read or write on the socket may block. */
    public const READ_WRITE_TIMEOUT = 30.0;

    /**
     * The URLs of `$urls`: a comma-separated list (a comma in a password is `%2C`) or an array of
     * them; spaces trimmed, empty entries dropped. Never shows a password when refusing one.
     *
     * @param string|list<string> $urls
     * @return list<string>
     * @throws \InvalidArgumentException no URL, more than MAX_URLS, or one not amqp:// or amqps://
     */
    public static function parseList(#[\SensitiveParameter] string|array $urls): array
    {
        $list = [];
        foreach (is_array($urls) ? $urls : [$urls] as $item) {
            foreach (explode(',', (string) $item) as $url) {
                $url = trim($url);
                if ($url !== '') {
                    $list[] = $url;
                }
            }
        }
        if ($list === []) {
            throw new \InvalidArgumentException('no AMQP URL given');
        }
        if (count($list) > self::MAX_URLS) {
            throw new \InvalidArgumentException(count($list) . ' AMQP URLs given, at most ' . self::MAX_URLS . ' are accepted');
        }
        foreach ($list as $url) {
            self::config($url, self::DEFAULT_CONNECTION_NAME);
        }
        return $list;
    }

    /** `$text` with the password of every URL in it replaced by `***` (as the service). */
    public static function redact(#[\SensitiveParameter] string $text): string
    {
        return (string) preg_replace('~([a-z][a-z0-9+.-]*://[^:/?#@\s,]*):[^/?#\s,]*@~i', '$1:***@', $text);
    }

    /** A library error as text for a message of ours: its class and redacted message. */
    public static function describe(\Throwable $error): string
    {
        $class = substr(strrchr('\\' . get_class($error), '\\'), 1);
        $message = self::redact($error->getMessage());
        return $message === '' ? $class : "{$class}: {$message}";
    }

    /**
     * Opens a connection to the first URL of `$urls` (one, a comma-separated list or an array)
     * that answers.
     *
     * @param string|list<string> $urls
     * @throws NoNodeAnswered with a redacted message
     */
    public static function connect(#[\SensitiveParameter] string|array $urls, string $connectionName = self::DEFAULT_CONNECTION_NAME): AbstractConnection
    {
        return (new AmqpNodes($urls, $connectionName))->connect()[0];
    }

    /** @internal Opens a connection to one URL (the library's exceptions pass through). */
    public static function open(#[\SensitiveParameter] string $url, string $connectionName): AbstractConnection
    {
        return AMQPConnectionFactory::create(self::config($url, $connectionName));
    }

    private static function config(#[\SensitiveParameter] string $url, string $connectionName): AMQPConnectionConfig
    {
        $parts = parse_url($url);
        if ($parts === false || !isset($parts['scheme'], $parts['host'])) {
            throw new \InvalidArgumentException(self::redact($url) . ' is not an AMQP URL (amqp://user:pass@host:port/vhost)');
        }
        $tls = $parts['scheme'] === 'amqps';
        if (!$tls && $parts['scheme'] !== 'amqp') {
            throw new \InvalidArgumentException(self::redact($url) . ' is not an amqp:// or amqps:// URL');
        }
        $config = new AMQPConnectionConfig();
        $config->setHost($parts['host']);
        $config->setPort($parts['port'] ?? ($tls ? 5671 : 5672));
        $config->setUser(isset($parts['user']) ? rawurldecode($parts['user']) : 'guest');
        $config->setPassword(isset($parts['pass']) ? rawurldecode($parts['pass']) : 'guest');
        $path = $parts['path'] ?? '';
        $config->setVhost(($path === '' || $path === '/') ? '/' : rawurldecode(substr($path, 1)));
        // `?heartbeat=N` (seconds, as the service's and pika's URLs); none by default: php-amqplib
        // services heartbeats only during a call, so an idle worker's connection would be closed
        // by the broker. A connection found dead is replaced at the next call either way.
        parse_str($parts['query'] ?? '', $query);
        $heartbeat = 0;
        if (isset($query['heartbeat'])) {
            if (!is_string($query['heartbeat']) || !ctype_digit($query['heartbeat']) || (int) $query['heartbeat'] > 65535) {
                throw new \InvalidArgumentException(self::redact($url) . ': heartbeat must be a number of seconds (0 to 65535)');
            }
            $heartbeat = (int) $query['heartbeat'];
        }
        $config->setHeartbeat($heartbeat);
        $config->setConnectionTimeout(self::CONNECT_TIMEOUT);
        // php-amqplib wants reads to wait at least two heartbeats.
        $config->setReadTimeout(max(self::READ_WRITE_TIMEOUT, 2.0 * $heartbeat));
        $config->setWriteTimeout(max(self::READ_WRITE_TIMEOUT, 2.0 * $heartbeat));
        $config->setConnectionName($connectionName);
        if ($tls) {
            $config->setIsSecure(true);
            $config->setSslVerify(true);
            $config->setSslVerifyName(true);
        }
        return $config;
    }
}
