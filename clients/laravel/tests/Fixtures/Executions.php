<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Tests\Fixtures;

/** The runs the fixture handler executed, in order (a container singleton in the tests). */
final class Executions
{
    /** @var list<int> */
    public array $runs = [];
}
