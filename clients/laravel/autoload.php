<?php

declare(strict_types=1);

/*
 * Autoloading without network or Composer (tests, a checkout): Composer's autoloader when
 * `composer install` ran here; else the PSR-4 rules `OperationRuns\Laravel\` → src/ and
 * `OperationRuns\Laravel\Tests\` → tests/, the PHP client from ../php (its autoload.php, which
 * loads php-amqplib), and the framework from Debian's php-laravel-framework
 * (/usr/share/php/Illuminate/autoload.php loads every Illuminate component and its dependencies).
 */

if (is_file(__DIR__ . '/vendor/autoload.php')) {
    require_once __DIR__ . '/vendor/autoload.php';
    return;
}

spl_autoload_register(static function (string $class): void {
    foreach (['OperationRuns\\Laravel\\Tests\\' => '/tests/', 'OperationRuns\\Laravel\\' => '/src/'] as $prefix => $dir) {
        if (strncmp($class, $prefix, strlen($prefix)) === 0) {
            $file = __DIR__ . $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require_once $file;
            }
            return;
        }
    }
});

require_once __DIR__ . '/../php/autoload.php';

if (!class_exists(\Illuminate\Support\ServiceProvider::class)) {
    $debian = '/usr/share/php/Illuminate/autoload.php';
    if (!is_file($debian)) {
        throw new RuntimeException('the Laravel framework is not found: run `composer install` or `apt-get install php-laravel-framework`');
    }
    require_once $debian;
}
