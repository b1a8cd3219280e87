<?php

declare(strict_types=1);

namespace OperationRuns\Laravel;

use Illuminate\Support\ServiceProvider;
use Illuminate\View\Compilers\BladeCompiler;
use OperationRuns\Laravel\Console\DispatchCommand;
use OperationRuns\Laravel\Console\ListenCommand;
use OperationRuns\Laravel\Console\StatusCommand;
use OperationRuns\Laravel\Console\WorkCommand;
use OperationRuns\OperationRunService;

/**
 * Wires the operation-runs PHP client into a Laravel application (auto-discovered through
 * composer.json `extra.laravel`): merges `config/operation-runs.php`, binds the client's
 * {@see OperationRunService} as a singleton (also as `operation-runs`, the facade's), publishes
 * the config with tag `operation-runs-config`, registers the artisan commands
 * `operation-runs:work`, `operation-runs:listen`, `operation-runs:dispatch` and
 * `operation-runs:status`, and the Blade components of namespace `operation-runs`
 * (`<x-operation-runs::progress … />`, views `operation-runs::…`).
 *
 * The service connects on its first command, so resolving it costs no connection.
 */
final class OperationRunsServiceProvider extends ServiceProvider
{
    /** `php artisan vendor:publish --tag=operation-runs-config`. */
    public const CONFIG_TAG = 'operation-runs-config';
    /** The config key (and file name) of the package. */
    public const CONFIG_KEY = 'operation-runs';

    public function register(): void
    {
        $this->mergeConfigFrom(self::configFile(), self::CONFIG_KEY);
        $this->app->singleton(OperationRunService::class, static function ($app): OperationRunService {
            $config = $app['config'][self::CONFIG_KEY];
            return new OperationRunService(
                $config['amqp_url'],
                (string) $config['namespace'],
                (string) $config['connection_name'],
                ($config['viewer_url'] ?? null) ?: null,
                ($config['api_secret'] ?? null) ?: null,
            );
        });
        $this->app->alias(OperationRunService::class, self::CONFIG_KEY);
        $this->app->singleton(ViewerClient::class, static function ($app): ViewerClient {
            $timeout = (float) ($app['config'][self::CONFIG_KEY . '.timeouts.http'] ?? 10);
            return new ViewerClient($app->make(OperationRunService::class), $timeout);
        });
    }

    public function boot(): void
    {
        $this->loadViewsFrom(dirname(__DIR__) . '/resources/views', self::CONFIG_KEY);
        // Only once Blade is resolved: an application without views pays nothing.
        $this->callAfterResolving(BladeCompiler::class, static function (BladeCompiler $blade): void {
            $blade->componentNamespace('OperationRuns\\Laravel\\View\\Components', self::CONFIG_KEY);
        });
        if ($this->app->runningInConsole()) {
            $this->publishes([self::configFile() => $this->app->configPath(self::CONFIG_KEY . '.php')], self::CONFIG_TAG);
            $this->commands([WorkCommand::class, ListenCommand::class, DispatchCommand::class, StatusCommand::class]);
        }
    }

    /** The package's default config file. */
    public static function configFile(): string
    {
        return dirname(__DIR__) . '/config/' . self::CONFIG_KEY . '.php';
    }
}
