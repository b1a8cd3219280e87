<?php

return [
    'name' => env('APP_NAME', 'operation-runs example'),
    'env' => env('APP_ENV', 'production'),
    'debug' => (bool) env('APP_DEBUG', false),
    'url' => env('APP_URL', 'http://platform.test'),
    'timezone' => 'UTC',
    'locale' => 'en',
    'fallback_locale' => 'en',
    'key' => env('APP_KEY', 'base64:' . base64_encode(str_repeat('k', 32))),
    'cipher' => 'AES-256-CBC',

    // The framework's providers this application uses (Debian's php-laravel-framework has no
    // Composer metadata of its own: they are listed, not discovered). The operation-runs
    // provider is not: it is discovered from vendor/composer/installed.json (autoload.php).
    'providers' => [
        Illuminate\Bus\BusServiceProvider::class,
        Illuminate\Cache\CacheServiceProvider::class,
        Illuminate\Foundation\Providers\ConsoleSupportServiceProvider::class,
        // The migration commands of the console support need it bound; this application has no
        // database, and nothing connects until a query is made.
        Illuminate\Database\DatabaseServiceProvider::class,
        Illuminate\Filesystem\FilesystemServiceProvider::class,
        Illuminate\Foundation\Providers\FoundationServiceProvider::class,
        Illuminate\Pipeline\PipelineServiceProvider::class,
        Illuminate\Queue\QueueServiceProvider::class,
        Illuminate\View\ViewServiceProvider::class,
        App\Providers\AppServiceProvider::class,
    ],

    'aliases' => [
        'Event' => Illuminate\Support\Facades\Event::class,
        'View' => Illuminate\Support\Facades\View::class,
    ],
];
