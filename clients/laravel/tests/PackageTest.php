<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Tests;

use Illuminate\Config\Repository;
use Illuminate\Console\Application as Artisan;
use Illuminate\Filesystem\Filesystem;
use Illuminate\Filesystem\FilesystemServiceProvider;
use Illuminate\View\ViewServiceProvider;
use OperationRuns\Laravel\Catalog\OperationCatalog;
use OperationRuns\Laravel\Catalog\OperationRunType;
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
use OperationRuns\Worker;
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
        foreach (['OPRUN_VIEWER_URL', 'OPRUN_VIEWER_SECRET'] as $name) {
            if (getenv($name) === false) {
                self::fail("{$name} is not set: run these tests through `cargo test --test it clients::`");
            }
        }
        putenv('OPERATION_RUNS_VIEWER_URL=' . getenv('OPRUN_VIEWER_URL'));
        putenv('OPERATION_RUNS_API_SECRET=' . getenv('OPRUN_VIEWER_SECRET'));
        $this->base = sys_get_temp_dir() . '/oprun-laravel-' . bin2hex(random_bytes(6));
        mkdir($this->base . '/config', 0700, true);
        mkdir($this->base . '/resources/views', 0700, true);
        mkdir($this->base . '/storage/views', 0700, true);
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
        self::assertSame(getenv('OPRUN_VIEWER_URL'), $config['viewer_url']);
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
        self::assertStringStartsWith(rtrim(getenv('OPRUN_VIEWER_URL'), '/') . "/runs/{$run->runId}?token=", $link);
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

    public function testTheGeneratedEnumNamesATypeForADispatchAndTheCatalogItsIdentityKeys(): void
    {
        self::assertSame('inventory.sync', OperationRunType::InventorySync->value);
        self::assertSame(['selection'], OperationCatalog::identityKeys(OperationRunType::InventorySync));
        self::assertGreaterThan(0, OperationCatalog::expectedDurationSeconds(OperationRunType::InventorySync));
        $context = ['selection' => $this->unique('enum')];
        $this->executorQueue();
        $run = OperationRuns::dispatchOrFail(OperationRunType::InventorySync, $this->workspace(), $this->tenant(), $context);
        $again = OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), $context);
        self::assertSame([$run->runId, true], [$again->runId, $again->deduplicated]);
    }

    public function testStatusPrintsTheRunFromTheViewerAndARunOutsideItsScopeIsNotFound(): void
    {
        $this->executorQueue();
        $run = OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), ['selection' => $this->unique('status')]);
        $artisan = $this->artisan();
        $scope = ['run' => (string) $run->runId, '--workspace' => (string) $this->workspace(), '--tenant' => [(string) $this->tenant()]];
        $out = $this->call($artisan, 'operation-runs:status', $scope);
        self::assertStringContainsString("run #{$run->runId} inventory.sync (", $out);
        self::assertStringContainsString('): queued, pending', $out);
        $json = json_decode($this->call($artisan, 'operation-runs:status', $scope + ['--json' => true]), true, 512, JSON_THROW_ON_ERROR);
        self::assertSame([$run->runId, 'queued'], [$json['id'], $json['status']]);
        self::assertStringNotContainsString('token', $out);

        $other = (string) getenv('OPRUN_OTHER_TENANT_ID');
        self::assertSame(1, $artisan->call('operation-runs:status', ['--tenant' => [$other]] + $scope));
        self::assertStringContainsString("run {$run->runId} is not found in workspace", $artisan->output());
    }

    public function testTheProgressComponentRendersAProgressElementFedByTheRunsLiveStreamFromAnAllowedOrigin(): void
    {
        $run = OperationRuns::dispatchOrFail('inventory.sync', $this->workspace(), $this->tenant(), ['selection' => $this->unique('component')]);
        file_put_contents(
            $this->base . '/resources/views/page.blade.php',
            '<main><x-operation-runs::progress :run="$runId" :workspace="$workspace" :tenant="$tenant" nonce="n0nce" class="mine" />'
            . '<x-operation-runs::progress :run="$runId" :workspace="$workspace" :tenant="$tenant" /></main>',
        );
        $html = $this->app['view']->make('page', ['runId' => $run->runId, 'workspace' => $this->workspace(), 'tenant' => $this->tenant()])->render();

        self::assertSame(2, substr_count($html, '<progress max="100"'), $html);
        self::assertSame(1, substr_count($html, '<script nonce="n0nce">'), 'the script once per page, with the nonce: ' . $html);
        self::assertStringContainsString('class="mine"', $html);
        self::assertStringContainsString("data-run-id=\"{$run->runId}\"", $html);
        self::assertSame(1, preg_match('/data-operation-runs-live="([^"]+)"/', $html, $m));
        $live = html_entity_decode($m[1]);
        self::assertStringStartsWith(rtrim(getenv('OPRUN_VIEWER_URL'), '/') . "/v1/runs/{$run->runId}/live?token=", $live);

        // What the page's EventSource gets: the run's stream, readable by the platform's origin.
        $origin = (string) getenv('OPRUN_VIEWER_ALLOWED_ORIGIN');
        $stream = fopen($live, 'r', false, stream_context_create(['http' => ['header' => "Origin: {$origin}\r\n", 'timeout' => 10]]));
        self::assertIsResource($stream);
        $headers = array_map(static fn (string $h): string => strtolower(trim($h)), stream_get_meta_data($stream)['wrapper_data']);
        self::assertContains(strtolower("Access-Control-Allow-Origin: {$origin}"), $headers);
        $read = '';
        while (!str_contains($read, 'operation_run.queued') && !feof($stream) && strlen($read) < 65536) {
            $read .= (string) fgets($stream);
        }
        fclose($stream);
        self::assertStringContainsString('event: operation_run.queued', $read);
    }

    /**
     * A booted application with the provider registered, `$config` as its config/ files hold.
     *
     * @param array<string, mixed> $config
     */
    private function application(array $config): Application
    {
        $app = new Application($this->base);
        // Blade, as an application's config/view.php sets it up.
        $config += ['view' => ['paths' => [$this->base . '/resources/views'], 'compiled' => $this->base . '/storage/views']];
        $app->instance('config', new Repository($config));
        Facade::clearResolvedInstances();
        Facade::setFacadeApplication($app);
        Artisan::forgetBootstrappers();
        $app->register(FilesystemServiceProvider::class);
        $app->register(ViewServiceProvider::class);
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

    /**
     * Declares an executor's job queue for `inventory.sync` (deleted after the test): a run
     * dispatched now stays queued (with no queue bound, the service fails a handed-off run at
     * once).
     */
    private function executorQueue(): void
    {
        $worker = new Worker(getenv('AMQP_URL'), getenv('OPRUN_NAMESPACE'), $this->unique('held'), ['inventory.sync']);
        $worker->declare();
        $this->queues[] = $worker->queue();
        $worker->close();
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
