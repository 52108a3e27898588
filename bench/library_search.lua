-- wrk script for bench/library_search.sh: every request asks for another search, as a
-- search-as-you-type box sends them ("ba", "bam", "bami", … "bamith"), cycling through the paths
-- listed one per line in the file named by $LF_SEARCH_PATHS. Each wrk thread starts at a
-- different place in the list so that connections do not ask for the same word at once.
local paths = {}
local next_index = 1

local function load_paths()
  local file = assert(io.open(os.getenv("LF_SEARCH_PATHS"), "r"), "LF_SEARCH_PATHS must name a file")
  for line in file:lines() do
    if line ~= "" then paths[#paths + 1] = line end
  end
  file:close()
  assert(#paths > 0, "no paths in " .. os.getenv("LF_SEARCH_PATHS"))
end

local thread_count = 0
function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  load_paths()
  -- thread_id is set by setup() before init runs; spread the starting points over the list.
  next_index = ((thread_id or 0) * 7919) % #paths + 1
end

function request()
  local path = paths[next_index]
  next_index = next_index % #paths + 1
  return wrk.format("GET", path)
end
