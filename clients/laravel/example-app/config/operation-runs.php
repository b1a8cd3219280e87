<?php

/*
 * This application's part of the operation-runs config: only what differs from the package's
 * defaults (Laravel merges the two, this file's keys winning; `php artisan vendor:publish
 * --tag=operation-runs-config` writes the whole file). The broker, namespace and viewer come from
 * the environment (OPERATION_RUNS_AMQP_URL, …) through the defaults.
 */

return [
    'connection_name' => env('OPERATION_RUNS_CONNECTION_NAME', 'operation-runs-example-app'),
    'executors' => [
        'inventory.sync' => App\OperationRuns\SyncInventory::class,
    ],
    'worker' => [
        'name' => env('OPERATION_RUNS_WORKER_NAME', 'example-app'),
    ],
];
