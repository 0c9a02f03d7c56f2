-- two_tasks: two LoRA adapters for two tasks on one model, trained one after the other, switched by name.
--
--   ftl run recipes/two_tasks.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [steps=40] [lr=1e-3]
--     [r=8] [batch_size=8] [max_len=256] [seed=1]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- The rows of data/instruct.jsonl are two tasks (opposites and plurals). Each task gets its own
-- adapter ("opposite", "plural") on the same frozen base; training one adapter leaves the other
-- untouched because only the active adapter is in the forward pass. Prints each task's held-out
-- loss with the base model and with each adapter, and saves both (OUT/opposite, OUT/plural;
-- PEFT's format, so one base can serve both).
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")
local report = require("report")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
local template = "{instruction} {input}\n"

local rows = ftl.data.jsonl("data/instruct.jsonl", {format = "instruction"}):rows()
local tasks = {
  {name = "opposite", match = "opposite"},
  {name = "plural", match = "plural"},
}
for _, t in ipairs(tasks) do
  local picked = {}
  for _, r in ipairs(rows) do
    if r.instruction:find(t.match, 1, true) then picked[#picked + 1] = r end
  end
  t.train, t.eval = ftl.data.from(picked, {format = "instruction", template = template})
    :split(0.8, {seed = args.seed or 1})
end

local base = {}
for _, t in ipairs(tasks) do base[t.name] = ftl.evaluate(m, t.eval).loss end

local steps = args.steps or 40
for _, t in ipairs(tasks) do
  presets.lora_attention(m, {r = args.r or 8, name = t.name})
  m:set_adapter(t.name)
  local r = ftl.train(m, t.train, {max_steps = steps, batch_size = args.batch_size or 8,
    max_len = args.max_len or 256, lr = args.lr or 1e-3, schedule = "cosine",
    warmup = schedule.warmup(steps, 0.1), clip = 1.0, seed = args.seed or 1})
  print(string.format("adapter %s: trainable %d, train loss %.4f", t.name, r.trainable, r.loss))
end

-- every task measured with the base and with each adapter
local results = {}
for _, t in ipairs(tasks) do
  local row = {task = t.name, base = base[t.name]}
  for _, a in ipairs(tasks) do
    m:set_adapter(a.name)
    row[a.name] = ftl.evaluate(m, t.eval).loss
  end
  results[#results + 1] = row
  print(string.format("task %s: eval loss %.4f -> %.4f with its adapter", t.name, base[t.name], row[t.name]))
end
report.table(results, {"task", {"base", "%.4f"}, {"opposite", "%.4f", title = "adapter opposite"},
  {"plural", "%.4f", title = "adapter plural"}})
for _, t in ipairs(tasks) do print("saved " .. m:save_adapter(t.name, {name = t.name})) end
