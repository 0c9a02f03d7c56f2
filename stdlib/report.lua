-- report: aligned markdown tables and CSV files of result rows.
--
--   local report = require("report")
--   report.table(rows, {"method", "trainable", {"loss", "%.3f"}})   -- prints, returns the text
--   report.csv("results.csv", rows, {"method", "trainable", "loss"}) -- under the output directory
--   report.write("notes.md", text)                                   -- any text file there
--
-- `rows` is a list of tables keyed by column name (or lists, taken in column order). A column is
-- a name, or {name, format} with a string.format format, or {name, format, title = "..."}.
-- Without `columns`, every key of the first row, sorted.
local M = {}

local function columns_of(rows, columns)
  if columns then return columns end
  local keys = {}
  for k in pairs(rows[1] or {}) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function spec(c)
  if type(c) == "table" then return c[1], c[2], c.title or tostring(c[1]) end
  return c, nil, tostring(c)
end

local function cell(row, i, key, fmt)
  local v = row[key]
  if v == nil then v = row[i] end
  if v == nil then return "" end
  if fmt then return string.format(fmt, v) end
  if math.type(v) == "float" then return string.format("%.4g", v) end
  return tostring(v)
end

local function cells(rows, columns)
  local head, body = {}, {}
  for i, c in ipairs(columns) do
    local _, _, title = spec(c)
    head[i] = title
  end
  for r, row in ipairs(rows) do
    body[r] = {}
    for i, c in ipairs(columns) do
      local key, fmt = spec(c)
      body[r][i] = cell(row, i, key, fmt)
    end
  end
  return head, body
end

--- The rows as a markdown table whose columns line up (numbers right-aligned); printed unless
--- `opts.quiet`; returns the text.
function M.table(rows, columns, opts)
  columns = columns_of(rows, columns)
  local head, body = cells(rows, columns)
  local width, numeric = {}, {}
  for i, h in ipairs(head) do
    width[i] = utf8.len(h) or #h
    numeric[i] = #body > 0
    for _, r in ipairs(body) do
      width[i] = math.max(width[i], utf8.len(r[i]) or #r[i])
      if r[i] ~= "" and not tonumber((r[i]:gsub("[%%sKMGx]$", ""))) then numeric[i] = false end
    end
  end
  local function line(vals)
    local out = {}
    for i, v in ipairs(vals) do
      local pad = string.rep(" ", width[i] - (utf8.len(v) or #v))
      out[i] = numeric[i] and (pad .. v) or (v .. pad)
    end
    return "| " .. table.concat(out, " | ") .. " |"
  end
  local rule = {}
  for i, w in ipairs(width) do
    rule[i] = numeric[i] and (string.rep("-", w - 1) .. ":") or string.rep("-", w)
  end
  local lines = {line(head), "| " .. table.concat(rule, " | ") .. " |"}
  for _, r in ipairs(body) do lines[#lines + 1] = line(r) end
  local text = table.concat(lines, "\n")
  if not (opts and opts.quiet) then print(text) end
  return text
end

local function csv_field(s)
  if s:find('[,"\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

--- Writes `text` to `path`, relative to the output directory (sandboxed or with --trust);
--- returns the path written.
function M.write(path, text)
  if io.write_file then return io.write_file(path, text) end
  -- with --trust `io` is Lua's own, relative to where ftl was started
  if path:sub(1, 1) ~= "/" then path = require("ftl").fs.join(require("ftl").out_dir, path) end
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

--- Writes the rows as CSV (a header line, then one line per row) to `path`, relative to the
--- output directory; returns the path written.
function M.csv(path, rows, columns)
  columns = columns_of(rows, columns)
  local head, body = cells(rows, columns)
  local lines = {}
  local function add(vals)
    local t = {}
    for i, v in ipairs(vals) do t[i] = csv_field(v) end
    lines[#lines + 1] = table.concat(t, ",")
  end
  add(head)
  for _, r in ipairs(body) do add(r) end
  return M.write(path, table.concat(lines, "\n") .. "\n")
end

return M
