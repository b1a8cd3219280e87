<?php

declare(strict_types=1);

/*
 * What Composer's vendor/autoload.php would do for this application, without Composer (no PHP
 * package registry is reachable here; decision 0084): the framework from Debian's
 * php-laravel-framework, the package and the PHP client from this repository, PSR-4 `App\` →
 * app/ and `Tests\` → tests/. It also writes what `composer install` would leave for package
 * discovery: vendor/composer/installed.json listing operation-runs/laravel with its
 * `extra.laravel` (read from the package's own composer.json), so that Laravel discovers the
 * provider and the facade alias as in an installed application.
 */

if (is_file(__DIR__ . '/vendor/autoload.php') && !is_file(__DIR__ . '/vendor/.generated')) {
    require_once __DIR__ . '/vendor/autoload.php';
    return;
}

require_once __DIR__ . '/../autoload.php';

spl_autoload_register(static function (string $class): void {
    foreach (['App\\' => '/app/', 'Tests\\' => '/tests/'] as $prefix => $dir) {
        if (strncmp($class, $prefix, strlen($prefix)) === 0) {
            $file = __DIR__ . $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require_once $file;
            }
            return;
        }
    }
});

(static function (): void {
    $package = json_decode((string) file_get_contents(__DIR__ . '/../composer.json'), true, 512, JSON_THROW_ON_ERROR);
    $installed = json_encode(['packages' => [[
        'name' => $package['name'],
        'type' => $package['type'],
        'extra' => $package['extra'],
        'install-path' => '../../..',
    ]]], JSON_THROW_ON_ERROR | JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES) . "\n";
    $file = __DIR__ . '/vendor/composer/installed.json';
    if (!is_file($file) || file_get_contents($file) !== $installed) {
        @mkdir(dirname($file), 0777, true);
        file_put_contents($file, $installed);
        touch(__DIR__ . '/vendor/.generated');
    }
})();
