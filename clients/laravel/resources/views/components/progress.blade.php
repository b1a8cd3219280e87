{{-- The run's live progress (OperationRuns\Laravel\View\Components\Progress): text only, every value written with textContent. --}}
<div class="operation-runs-progress" data-operation-runs-live="{{ $liveUrl }}" data-run-id="{{ $run }}" data-status="pending" {{ $attributes }}>
    <progress max="100" aria-label="Run #{{ $run }}"></progress>
    <span data-operation-runs-text>Run #{{ $run }}: waiting for its progress…</span>
</div>
@once
<script{!! $nonce !== null ? ' nonce="' . e($nonce) . '"' : '' !!}>
(function () {
    'use strict';
    var TYPES = ['operation_run.queued', 'operation_run.started', 'operation_run.progressed',
        'operation_run.cancel_requested', 'operation_run.completed'];
    function follow(el) {
        if (el.getAttribute('data-following')) { return; }
        el.setAttribute('data-following', '1');
        var url = el.getAttribute('data-operation-runs-live');
        var bar = el.querySelector('progress');
        var text = el.querySelector('[data-operation-runs-text]');
        var last = 0, done = false, failures = 0, source = null;
        function show(event) {
            var run = event.data.run, counts = run.summary_counts || {};
            if (counts.total > 0) {
                bar.max = counts.total;
                bar.value = Math.min(counts.processed || 0, counts.total);
            }
            var line = 'Run #' + run.id + ': ' + run.status;
            if (run.status === 'completed') { line += ', ' + run.outcome; }
            if (counts.total > 0) { line += ' (' + (counts.processed || 0) + '/' + counts.total + ')'; }
            text.textContent = line;
            el.setAttribute('data-status', run.status);
            if (run.status === 'completed') { el.setAttribute('data-outcome', run.outcome); }
        }
        function open() {
            // Reopened by hand with ?after= (never the browser's own reconnection, whose
            // Last-Event-ID header would need a preflight).
            source = new EventSource(url + (last > 0 ? '&after=' + last : ''));
            TYPES.forEach(function (type) {
                source.addEventListener(type, function (message) {
                    failures = 0;
                    last = parseInt(message.lastEventId, 10) || last;
                    var event = JSON.parse(message.data);
                    show(event);
                    if (event.type === 'operation_run.completed') { done = true; source.close(); }
                });
            });
            source.onerror = function () {
                source.close();
                if (!done && ++failures <= 5) { setTimeout(open, 1000 * failures); }
            };
        }
        open();
    }
    function start() {
        document.querySelectorAll('[data-operation-runs-live]').forEach(follow);
    }
    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', start);
    } else {
        start();
    }
})();
</script>
@endonce
