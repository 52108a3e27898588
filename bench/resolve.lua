-- wrk script for bench/resolve.sh: POST /api/v1/generation/resolve with 10 characters
-- (char-0 … char-9, by character id only: each resolves to that character's newest completed
-- LoRA), a new generation_id on every request so every request records its uses (the write path
-- is measured, not skipped as a retry). Any answer other than 200 with 10 "lora" modes counts as
-- an error and fails the script.
local token = os.getenv("LF_TOKEN")
-- Unique per wrk run, so a later run on the same database never repeats a generation id.
local run = os.getenv("LF_RUN") or "0"
local chars = {}
for i = 0, 9 do
    chars[#chars + 1] = string.format(
        '{"character_id":"char-%d","reference_images":["https://img.example/%d.png"]}', i, i)
end
local tail = '","characters":[' .. table.concat(chars, ",") .. ']}'
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
local threads = {}
local n = 0

function setup(thread)
    n = n + 1
    thread:set("tid", n)
    table.insert(threads, thread)
end

function init(args)
    counter = 0
    bad = 0
end

function request()
    counter = counter + 1
    return wrk.format("POST", "/api/v1/generation/resolve", headers,
        '{"generation_id":"bench-' .. run .. '-' .. tid .. '-' .. counter .. tail)
end

function response(status, hdrs, body)
    local _, loras = string.gsub(body, '"mode":"lora"', "")
    if status ~= 200 or loras ~= 10 then
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local total = 0
    for _, t in ipairs(threads) do total = total + t:get("bad") end
    io.write(string.format("bad_answers %d\n", total))
end
