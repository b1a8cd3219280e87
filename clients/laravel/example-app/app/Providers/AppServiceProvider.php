<?php

namespace App\Providers;

use App\OperationRuns\Inventory;
use Illuminate\Support\ServiceProvider;

class AppServiceProvider extends ServiceProvider
{
    public function register(): void
    {
        $this->app->singleton(Inventory::class);
    }
}
