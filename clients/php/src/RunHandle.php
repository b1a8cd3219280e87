<?php

declare(strict_types=1);

namespace OperationRuns;

/**
 * What a {@see Worker}'s handler gets for the run it executes: the job (`$runId`, `$type`,
 * `$workspaceId`, `$tenantId`, `$context`), progress reports, failures, and whether the run's
 * cancel was requested.
 *
 * The handler returns the outcome (`succeeded`, `partially_succeeded`, `failed`, `blocked`,
 * `cancelled`) or `null`, which means `cancelled` when {@see cancelRequested()} answered true,
 * else `failed` when {@see fail()} was called, else `succeeded`. Failures recorded with
 * {@see fail()} go with the completion whatever the outcome.
 */
final class RunHandle
{
    /** Most failures one command may carry (the service's bound). */
    public const MAX_FAILURES_PER_COMMAND = 100;
    /** The longest failure message the service keeps, in characters. */
    public const MAX_MESSAGE_CHARS = 1000;

    /** @var list<array<string, mixed>> failures not sent yet */
    private array $failures = [];
    private bool $failed = false;
    private bool $cancelled = false;
    private bool $sawCancel = false;

    /**
     * @internal built by the Worker
     * @param array<string, mixed> $context
     * @param \Closure(): bool $heard whether the run's cancel has come (reads the cancel queue)
     */
    public function __construct(
        public readonly int $runId,
        public readonly string $type,
        public readonly int $workspaceId,
        public readonly ?int $tenantId,
        public readonly array $context,
        private readonly OperationRunService $service,
        private readonly \Closure $heard,
        private readonly float $replyTimeout,
    ) {
    }

    /**
     * Adds to the run's summary counts, as named arguments (`progress(processed: 10)`, `total`
     * once at the start): keys `total processed succeeded failed skipped created updated deleted
     * items`, non-negative increments (the service adds them up). Waits for the service's reply.
     *
     * @throws CommandRefused|CommandNotAnswered as {@see OperationRunService::incrementSummaryCounts()}
     */
    public function progress(int ...$counts): void
    {
        if ($counts !== [] && array_is_list($counts)) {
            throw new \InvalidArgumentException('progress takes named counts, e.g. progress(processed: 10)');
        }
        if ($counts !== []) {
            $this->service->incrementSummaryCounts($this->runId, $this->workspaceId, $this->tenantId, $counts, ['timeout' => $this->replyTimeout]);
        }
    }

    /**
     * Records a failure (`$code` `[A-Za-z0-9_.-]{1,128}`, a message the service sanitises and
     * cuts to 1,000 characters, optionally the item and a finer reason code): sent with the
     * completion (every 100th is sent at once, within the service's bound per command), and the
     * run completes `failed` unless the handler returns another outcome.
     *
     * @param string|int|array<string, mixed>|null $item
     */
    public function fail(string $code, string $message, string|int|array|null $item = null, ?string $reasonCode = null): void
    {
        $failure = ['code' => $code, 'message' => self::utf8($message)];
        if ($reasonCode !== null) {
            $failure['reason_code'] = $reasonCode;
        }
        if ($item !== null) {
            $failure['item'] = $item;
        }
        $this->failed = true;
        $this->failures[] = $failure;
        if (count($this->failures) === self::MAX_FAILURES_PER_COMMAND) {
            $this->service->appendFailures($this->runId, $this->workspaceId, $this->tenantId, $this->failures, ['timeout' => $this->replyTimeout]);
            $this->failures = [];
        }
    }

    /**
     * Whether the run's cancel was requested (an operator, the platform or the API asked). Reads
     * the worker's cancel queue at most every 0.2 s; once true, stays true. A handler that stops
     * for it returns `null` or `'cancelled'`.
     */
    public function cancelRequested(): bool
    {
        if (!$this->cancelled && ($this->heard)()) {
            $this->cancelled = true;
        }
        $this->sawCancel = $this->sawCancel || $this->cancelled;
        return $this->cancelled;
    }

    /** @internal the cancel came (the Worker tells) */
    public function markCancelled(): void
    {
        $this->cancelled = true;
    }

    /** @internal whether the cancel was known, without reading the queue */
    public function isCancelled(): bool
    {
        return $this->cancelled;
    }

    /** @internal `$text` as valid UTF-8 without control characters, cut to the message limit. */
    public static function printable(string $text): string
    {
        $clean = (string) preg_replace('/[\x00-\x1f\x7f]/u', ' ', self::utf8($text));
        preg_match('/^.{0,' . self::MAX_MESSAGE_CHARS . '}/us', $clean, $cut);
        return $cut[0] ?? '';
    }

    /** `$text` with invalid UTF-8 replaced (U+FFFD), so that it encodes as JSON. */
    private static function utf8(string $text): string
    {
        return (string) json_decode(json_encode($text, JSON_INVALID_UTF8_SUBSTITUTE | JSON_THROW_ON_ERROR));
    }

    /**
     * @internal the outcome of a handler that returned `$returned`
     */
    public function outcome(?string $returned): string
    {
        return $returned ?? match (true) {
            $this->sawCancel => 'cancelled',
            $this->failed => 'failed',
            default => 'succeeded',
        };
    }

    /**
     * @internal the failures not sent yet (taken: a second call returns none)
     * @return list<array<string, mixed>>
     */
    public function takeFailures(): array
    {
        [$failures, $this->failures] = [$this->failures, []];
        return $failures;
    }
}
