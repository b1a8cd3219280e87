<?php

declare(strict_types=1);

/*
 * Autoloading without network or Composer: use Composer's autoloader when `composer install` ran
 * (vendor/autoload.php, which also loads php-amqplib), else register the PSR-4 rule for
 * `OperationRuns\` → src/ and load php-amqplib from Debian's package (php-amqplib).
 */

if (is_file(__DIR__ . '/vendor/autoload.php')) {
    require_once __DIR__ . '/vendor/autoload.php';
    return;
}

spl_autoload_register(static function (string $class): void {
    $prefix = 'OperationRuns\\';
    if (strncmp($class, $prefix, strlen($prefix)) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require_once $file;
    }
});

if (!class_exists(\PhpAmqpLib\Connection\AMQPStreamConnection::class)) {
    $debian = '/usr/share/php/PhpAmqpLib/autoload.php';
    if (!is_file($debian)) {
        throw new RuntimeException('php-amqplib not found: run `composer install` or `apt-get install php-amqplib`');
    }
    require_once $debian;
}
