-- Writes the fuzz targets' small models and adapters (fuzz/files/models, fuzz/files/adapters):
--   ftl run fuzz/make-files.lua --out fuzz/files
-- Tiny shapes keep each fuzz input small and each execution fast.
local ftl = require("ftl")
local shape = {hidden_size = 8, intermediate_size = 16, num_hidden_layers = 1,
  num_attention_heads = 2, num_key_value_heads = 1, vocab_size = 16, max_position_embeddings = 16}
for _, arch in ipairs({"llama", "qwen2", "gpt2", "bert"}) do
  local c = {}
  for k, v in pairs(shape) do c[k] = v end
  if arch == "gpt2" then c = {n_embd = 8, n_layer = 1, n_head = 2, vocab_size = 16, n_positions = 16} end
  if arch == "bert" then c.num_key_value_heads = nil; c.type_vocab_size = 2 end
  ftl.new(arch, c):save("models/" .. arch)
end
local methods = {
  lora = {targets = {"q_proj", "v_proj"}, r = 2},
  ia3 = {},
  loha = {targets = {"q_proj"}, r = 2},
  lokr = {targets = {"q_proj"}, r = 2},
  vera = {targets = {"q_proj", "v_proj"}, r = 2},
  prefix = {tokens = 2},
  prompt = {tokens = 2},
}
for name, o in pairs(methods) do
  local m = ftl.load(ftl.out_dir .. "/models/llama")
  ftl[name](m, o)
  m:save_adapter("adapters/" .. name)
end
-- a checkpoint (ck/step-2, ck/latest) and a run manifest (run.ron) to start from
local m = ftl.load(ftl.out_dir .. "/models/llama")
ftl.lora(m, {targets = {"q_proj"}, r = 2})
local ids = {}
for i = 1, 8 do ids[i] = {i % 16, (i * 3) % 16, (i * 5) % 16, 1} end
ftl.train(m, ftl.data.tokens({input_ids = ids}), {lr = 1e-3, max_steps = 2, batch_size = 2, log_every = 1000,
  save = {dir = "ck", every = 2, keep = 1}})
