<?php

/*
 * operation-runs: the service's broker, namespace and viewer, and the executors this application
 * runs. Published with `php artisan vendor:publish --tag=operation-runs-config`.
 */

return [
    // One AMQP URL, or the nodes of a cluster as a comma-separated list (a comma in a password is
    // %2C); the first that answers is used. `?heartbeat=N` asks for heartbeats.
    'amqp_url' => env('OPERATION_RUNS_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2f'),

    // The service's namespace: its exchanges and queues are named `<namespace>.…`.
    'namespace' => env('OPERATION_RUNS_NAMESPACE', 'operation_runs'),

    // The run viewer's base URL and the secret it was started with (`--api-secret`, at least
    // 32 bytes): both are needed for OperationRuns::viewUrl(); neither for commands.
    'viewer_url' => env('OPERATION_RUNS_VIEWER_URL'),
    'api_secret' => env('OPERATION_RUNS_API_SECRET'),

    // The name the broker shows for this application's connections.
    'connection_name' => env('OPERATION_RUNS_CONNECTION_NAME', 'operation-runs-laravel'),

    'timeouts' => [
        // Seconds a worker waits for the service's answer to a start, progress or completion
        // before sending it again with the same command id (applied once).
        'reply' => (float) env('OPERATION_RUNS_REPLY_TIMEOUT', 30),
        // Seconds `operation-runs:status` waits for the run viewer's answer.
        'http' => (float) env('OPERATION_RUNS_HTTP_TIMEOUT', 10),
    ],

    'progress' => [
        // `<x-operation-runs::progress />`: seconds the live stream's run-scoped token is valid
        // from the page's rendering (the stream ends then; a page open longer shows the last
        // progress it got).
        'token_ttl' => (int) env('OPERATION_RUNS_PROGRESS_TOKEN_TTL', 900),
    ],

    // `php artisan operation-runs:work`: run type ⇒ handler class, resolved from the container
    // for each job. A handler has `handle(\OperationRuns\RunHandle $run): ?string` (or is
    // invokable) and returns the outcome, or null (see RunHandle).
    'executors' => [
        // 'inventory.sync' => \App\OperationRuns\SyncInventory::class,
    ],

    'worker' => [
        // The worker's durable job queue is `<namespace>.worker.<name>`: the processes of one name
        // share its jobs. A process started with --type gets `<name>.<type>+<type>…` instead.
        'name' => env('OPERATION_RUNS_WORKER_NAME', 'laravel'),
    ],

    'events' => [
        // `php artisan operation-runs:listen` reads this durable queue (bound to `<namespace>.events`;
        // by least privilege `<namespace>.subscriber.<name>`), which keeps events while no
        // listener runs; null: an exclusive queue of its own (events while none runs are lost).
        'queue' => env('OPERATION_RUNS_EVENTS_QUEUE'),
    ],
];
