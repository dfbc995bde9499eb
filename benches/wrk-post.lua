-- wrk script of benches/run.sh: POSTs debits with unique transactionIds,
-- exactly PER_THREAD of them per thread, then stops.
--
--   wrk -tT -cC -dMAXs -s benches/wrk-post.lua URL -- RUN_ID PER_THREAD DONE_FILE T PATH [TOKEN ACCOUNT_PREFIX ACCOUNTS AMOUNT]
--
-- PATH /transactions with no TOKEN: the switch protocol (sims, or nginx in
-- front of them); the body is the one clients send, the sims only read its
-- transactionId. PATH /v1/transactions with TOKEN: the gateway's API, debits
-- of AMOUNT spread round-robin over accounts ACCOUNT_PREFIX0..ACCOUNTS-1.
--
-- Exactly PER_THREAD debits per thread leave, so the server sees the count
-- the run claims. wrk needs a request from every call of request(), and
-- makes one call at start-up whose answer it never sends (on the first
-- thread, to check the script): so the first call of each thread, and every
-- call once the thread has sent its share, returns `GET /__bench_idle` (a 404
-- that creates nothing and is not counted), the latter after a 1 s delay (by
-- then the thread has usually finished). wrk itself only ends at -d, so the
-- last thread to finish sends wrk SIGINT, and wrk reports the real elapsed
-- time. Threads are separate Lua states: they count finished threads in
-- DONE_FILE (which, and DONE_FILE.lock, must not exist at start).
--
-- done() prints `key value` lines that run.sh reads. The latency figures are
-- wrk's, over every answer (the few idle GETs included).

local threads = {}
local thread_count = 0

function setup(thread)
    thread_count = thread_count + 1
    thread:set("tid", thread_count)
    table.insert(threads, thread)
end

-- Globals (not locals) so that done() can read them with thread:get.
sent, answered, committed, insufficient, ok_200, other = 0, 0, 0, 0, 0, 0
local calls = 0
local prefix, limit, done_file, threads_total, path, headers
local account_prefix, accounts, amount = "acct-", 256, 1
local idle

function init(args)
    prefix = args[1] .. "-t" .. tid .. "-"
    limit = tonumber(args[2])
    done_file = args[3]
    threads_total = tonumber(args[4])
    path = args[5]
    headers = { ["Content-Type"] = "application/json" }
    if args[6] and args[6] ~= "" then
        headers["Authorization"] = "Bearer " .. args[6]
        account_prefix, accounts, amount = args[7], tonumber(args[8]), tonumber(args[9])
    end
end

-- This thread has its share answered: stop it, and stop wrk if it was the last.
local function finish()
    wrk.thread:stop()
    local f = io.open(done_file, "a")
    f:write(tid, "\n")
    f:close()
    local finished = 0
    for _ in io.lines(done_file) do finished = finished + 1 end
    if finished >= threads_total then
        -- wrk's main thread sleeps until a SIGINT wakes it, but a signal to
        -- the process is sometimes taken by a worker thread instead. So one
        -- shell (mkdir is atomic) sends SIGINT every 20 ms until wrk is gone.
        -- The shell's parent is wrk. Not os.execute: system() ignores SIGINT in
        -- the caller while it runs, so wrk would never see the signal.
        local sh = io.popen("mkdir '" .. done_file .. ".lock' 2>/dev/null &&"
            .. " (while kill -INT $PPID 2>/dev/null; do sleep 0.02; done) >/dev/null 2>&1 &")
        sh:close()
    end
end

function request()
    calls = calls + 1
    if calls == 1 or sent >= limit then
        idle = idle or wrk.format("GET", "/__bench_idle")
        return idle
    end
    local account = ((sent * threads_total) + tid - 1) % accounts
    sent = sent + 1
    local body = string.format(
        '{"transactionId":"%s%d","type":"debit","accountId":"%s%d","amount":%d,"currency":"EUR"}',
        prefix, sent, account_prefix, account, amount)
    return wrk.format("POST", path, headers, body)
end

function delay()
    if sent >= limit then return 1000 end
    return 0
end

function response(status, headers, body)
    if status == 404 then return end -- an idle GET
    answered = answered + 1
    if status == 201 and body:find('"committed"', 1, true) then
        committed = committed + 1
    elseif body:find("insufficient_funds", 1, true) then
        insufficient = insufficient + 1
    elseif status == 200 then
        ok_200 = ok_200 + 1
    else
        other = other + 1
    end
    if answered == limit then finish() end
end

function done(summary, latency, requests)
    local sum = {}
    for _, name in ipairs({ "answered", "committed", "insufficient", "ok_200", "other" }) do
        sum[name] = 0
        for _, t in ipairs(threads) do sum[name] = sum[name] + t:get(name) end
    end
    local e = summary.errors
    local seconds = summary.duration / 1e6
    io.write(string.format("requests %d\n", sum.answered))
    io.write(string.format("wall_s %.3f\n", seconds))
    io.write(string.format("throughput %.0f\n", sum.answered / seconds))
    io.write(string.format("p50_ms %.2f\n", latency:percentile(50) / 1000))
    io.write(string.format("p99_ms %.2f\n", latency:percentile(99) / 1000))
    io.write(string.format("max_ms %.2f\n", latency.max / 1000))
    io.write(string.format("committed %d\n", sum.committed))
    io.write(string.format("insufficient %d\n", sum.insufficient))
    io.write(string.format("ok_200 %d\n", sum.ok_200))
    io.write(string.format("other %d\n", sum.other))
    io.write(string.format("socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
end
