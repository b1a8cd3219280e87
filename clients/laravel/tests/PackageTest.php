<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Tests;

use Illuminate\Config\Repository;
use Illuminate\Console\Application as Artisan;
use Illuminate\Filesystem\Filesystem;
use Illuminate\Foundation\Application;
use Illuminate\Foundation\Console\VendorPublishCommand;
use Illuminate\Support\Facades\Facade;
use OperationRuns\AmqpUrl;
use OperationRuns\CommandRefused;
use OperationRuns\Laravel\Events\OperationRunCompleted;
use OperationRuns\Laravel\Events\OperationRunEvent;
use OperationRuns\Laravel\Events\OperationRunQueued;
use OperationRuns\Laravel\Facades\OperationRuns;
use OperationRuns\Laravel\OperationRunsServiceProvider;
use OperationRuns\Laravel\Tests\Fixtures\Executions;
use OperationRuns\Laravel\Tests\Fixtures\SyncInventory;
use OperationRuns\OperationRunService;
use PHPUnit\Framework\TestCase;

/**
 * The package inside a minimal Laravel application (Debian's php-laravel-framework), against a
 * running service that hands jobs off (tests/it/clients.rs starts one): the config merged from
 * the environment and publishable, the facade over the container's singleton, a dispatch through
 * it, and a job executed by `operation-runs:work` whose events `operation-runs:listen` turns
 * into Laravel events.
 */
final class PackageTest extends TestCase
{
    private string $base;
    private Application $app;
    /** @var list<string> durable queues a test declared */
    private array $queues = [];

    protected function setUp(): void
    {
        foreach (['AMQP_URL', 'OPRUN_NAMESPACE', 'OPRUN_WORKSPACE_ID', 'OPRUN_TENANT_ID'] as $name) {
            if (getenv($name) === false) {
                self::fail("{$name} is not set: run these tests through `cargo test --test it clients::`");
            }
        }
        // As the application's .env would set them.
        putenv('OPERATION_RUNS_AMQP_URL=' . getenv('AMQP_URL'));
        putenv('OPERATION_RUNS_NAMESPACE=' . getenv('OPRUN_NAMESPACE'));
        putenv('OPERATION_RUNS_VIEWER_URL=https://runs.example.com');
        putenv('OPERATION_RUNS_API_SECRET=' . str_repeat('s', 32));
        $this->base = sys_get_temp_dir() . '/oprun-laravel-' . bin2hex(random_bytes(6));
        mkdir($this->base . '/config', 0700, true);
        $this->app = $this->application([]);
    }

    protected function tearDown(): void
    {
        $this->app->make(OperationRunService::class)->close();
        if ($this->queues !== []) {
            $connection = AmqpUrl::connect(getenv('AMQP_URL'));
            foreach ($this->queues as $queue) {
                $connection->channel()->queue_delete($queue);
            }
            $connection->close();
        }
        (new Filesystem())->deleteDirectory($this->base);
        Facade::clearResolvedInstances();
    }

    public function testTheConfigIsMergedFromTheEnvironmentUnderTheApplicationsOwn(): void
    {
        $config = $this->app['config']['operation-runs'];
        self::assertSame(getenv('AMQP_URL'), $config['amqp_url']);
        self::assertSame(getenv('OPRUN_NAMESPACE'), $config['namespace']);
        self::assertSame('https://runs.example.com', $config['viewer_url']);
        self::assertSame(30.0, $config['timeouts']['reply']);
        self::assertSame([], $config['executors']);

        // A published (and edited) file wins over the package's defaults, key by key.
        $app = $this->application(['operation-runs' => ['namespace' => 'edited', 'executors' => ['inventory.sync' => SyncInventory::class]]]);
        self::assertSame('edited', $app['config']['operation-runs.namespace']);
        self::assertSame(['inventory.sync' => SyncInventory::class], $app['config']['operation-runs.executors']);
        self::assertSame(getenv('AMQP_URL'), $app['config']['operation-runs.amqp_url']);
    }

    public function testVendorPublishWithTheConfigTagCopiesTheConfigFile(): void
    {
        $artisan = $this->artisan();
        $artisan->add(new VendorPublishCommand(new Filesystem()));
        $this->call($artisan, 'vendor:publish', ['--tag' => [OperationRunsServiceProvider::CONFIG_TAG]]);
        self::assertFileEquals(OperationRunsServiceProvider::configFile(), $this->base . '/config/operation-runs.php');
    }

    public function testTheFacadeIsTheContainersOneServiceAndDispatchesARun(): void
    {
        $service = $this->app->make(OperationRunService::class);
        self::assertSame($service, $this->app->make(OperationRunService::class));
        self::assertSame($service, $this->app->make('operation-runs'));
        self::assertSame($service, OperationRuns::getFacadeRoot());

        $run = OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), ['selection' => $this->unique('facade')]);
        self::assertGreaterThan(0, $run->runId);
        self::assertFalse($run->deduplicated);
        self::assertMatchesRegularExpression('/^[0-9a-f]{64}$/', $run->runIdentityHash);

        $link = OperationRuns::viewUrl($run->runId, $this->workspace(), [$this->tenant()]);
        self::assertStringStartsWith("https://runs.example.com/runs/{$run->runId}?token=", $link);
    }

    public function testARefusedDispatchIsACommandRefusedWithItsCode(): void
    {
        try {
            OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), []);
            self::fail('a dispatch without its identity key was accepted');
        } catch (CommandRefused $e) {
            self::assertSame('missing_identity_key', $e->getErrorCode());
        }
    }

    public function testWorkExecutesEachJobOnceThroughTheContainersHandlerAndListenDispatchesItsEvents(): void
    {
        $namespace = getenv('OPRUN_NAMESPACE');
        $name = $this->unique('laravel');
        $eventsQueue = "{$namespace}.subscriber.{$name}";
        $this->queues = ["{$namespace}.worker.{$name}", $eventsQueue];
        $this->app['config']->set('operation-runs.executors', ['inventory.sync' => SyncInventory::class]);
        $this->app['config']->set('operation-runs.worker.name', $name);
        $this->app['config']->set('operation-runs.events.queue', $eventsQueue);
        $this->app->singleton(Executions::class);
        /** @var list<OperationRunEvent> $heard */
        $heard = [];
        foreach (OperationRunEvent::CLASSES as $class) {
            $this->app['events']->listen($class, static function (OperationRunEvent $event) use (&$heard): void {
                $heard[] = $event;
            });
        }
        $artisan = $this->artisan();

        // Both durable queues declared first: the job and the events wait in them.
        $this->call($artisan, 'operation-runs:listen', ['--idle-timeout' => '0.1']);
        self::assertStringContainsString('0 job(s) settled', $this->call($artisan, 'operation-runs:work', ['--idle-timeout' => '0.1']));

        $context = ['selection' => $this->unique('work')];
        $run = OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), $context);
        $again = OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), $context);
        self::assertSame([$run->runId, true], [$again->runId, $again->deduplicated]);

        self::assertStringContainsString('1 job(s) settled', $this->call($artisan, 'operation-runs:work', ['--max-jobs' => '1', '--idle-timeout' => '10']));
        self::assertSame([$run->runId], $this->app->make(Executions::class)->runs);

        // Until the completion's event has come (the relay publishes shortly after the commit).
        for ($i = 0; $i < 10 && !$this->completed($heard, $run->runId); $i++) {
            $this->call($artisan, 'operation-runs:listen', ['--idle-timeout' => '0.5']);
        }
        $ofRun = array_values(array_filter($heard, static fn (OperationRunEvent $e): bool => $e->runId() === $run->runId));
        self::assertNotEmpty($ofRun);
        self::assertInstanceOf(OperationRunQueued::class, $ofRun[0]);
        $last = $ofRun[count($ofRun) - 1];
        self::assertInstanceOf(OperationRunCompleted::class, $last);
        self::assertSame('succeeded', $last->run['outcome']);
        self::assertSame(3, $last->run['summary_counts']['processed']);
        self::assertSame(range(1, count($ofRun)), array_map(static fn (OperationRunEvent $e): int => $e->sequence, $ofRun));
    }

    public function testDispatchCommandPrintsTheRunAndARefusalExitsWithItsCode(): void
    {
        $artisan = $this->artisan();
        $context = json_encode(['selection' => $this->unique('artisan')]);
        $parameters = ['type' => 'inventory.sync', '--workspace' => (string) $this->workspace(), '--tenant' => (string) $this->tenant(), '--context' => $context];
        $first = json_decode($this->call($artisan, 'operation-runs:dispatch', $parameters), true, 512, JSON_THROW_ON_ERROR);
        self::assertGreaterThan(0, $first['run_id']);
        self::assertFalse($first['deduplicated']);

        self::assertSame(1, $artisan->call('operation-runs:dispatch', ['--context' => '{}'] + $parameters));
        self::assertStringContainsString('refused: missing_identity_key', $artisan->output());
    }

    public function testWorkRefusesATypeWithoutAnExecutor(): void
    {
        $artisan = $this->artisan();
        self::assertSame(1, $artisan->call('operation-runs:work', ['--type' => ['inventory.sync']]));
        self::assertStringContainsString('no executor is configured for inventory.sync', $artisan->output());
    }

    /**
     * A booted application with the provider registered, `$config` as its config/ files hold.
     *
     * @param array<string, mixed> $config
     */
    private function application(array $config): Application
    {
        $app = new Application($this->base);
        $app->instance('config', new Repository($config));
        Facade::clearResolvedInstances();
        Facade::setFacadeApplication($app);
        Artisan::forgetBootstrappers();
        $app->register(OperationRunsServiceProvider::class);
        $app->boot();
        return $app;
    }

    private function artisan(): Artisan
    {
        return new Artisan($this->app, $this->app['events'], 'test');
    }

    /**
     * Runs an artisan command that must exit 0 and returns its output, which never shows the
     * broker password.
     *
     * @param array<string, mixed> $parameters
     */
    private function call(Artisan $artisan, string $command, array $parameters): string
    {
        $exit = $artisan->call($command, $parameters);
        // output() empties the buffer: read it once.
        $output = $artisan->output();
        self::assertSame(0, $exit, $output);
        $password = parse_url(explode(',', getenv('AMQP_URL'))[0], PHP_URL_PASS);
        if (is_string($password) && $password !== '') {
            self::assertStringNotContainsString(rawurldecode($password), $output, 'no password in artisan output');
        }
        return $output;
    }

    /** @param list<OperationRunEvent> $heard */
    private function completed(array $heard, int $runId): bool
    {
        foreach ($heard as $event) {
            if ($event instanceof OperationRunCompleted && $event->runId() === $runId) {
                return true;
            }
        }
        return false;
    }

    private function unique(string $prefix): string
    {
        return $prefix . '-' . bin2hex(random_bytes(6));
    }

    private function workspace(): int
    {
        return (int) getenv('OPRUN_WORKSPACE_ID');
    }

    private function tenant(): int
    {
        return (int) getenv('OPRUN_TENANT_ID');
    }
}
