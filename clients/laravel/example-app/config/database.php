<?php

// No database: the framework's console commands need the manager bound, nothing queries it.
return [
    'default' => env('DB_CONNECTION', 'none'),
    'connections' => [],
    'migrations' => 'migrations',
];
