<?php

namespace Tests;

use Illuminate\Contracts\Console\Kernel;
use Illuminate\Foundation\Testing\TestCase as BaseTestCase;

abstract class TestCase extends BaseTestCase
{
    /** Debian packages no Mockery: artisan() returns the exit code, Artisan::output() the text. */
    public $mockConsoleOutput = false;

    public function createApplication()
    {
        // Discovered anew from vendor/composer/installed.json (autoload.php), never a stale cache.
        @unlink(__DIR__ . '/../bootstrap/cache/packages.php');
        @unlink(__DIR__ . '/../bootstrap/cache/services.php');
        $app = require __DIR__ . '/../bootstrap/app.php';
        $app->make(Kernel::class)->bootstrap();
        return $app;
    }
}
