// One decoder step, and the whole greedy loop, in C++: the same ATen ops in the same order
// as RecurrentDecoder.step (seq2seq_core/model/decoder.py) over a decoding call's packed
// weights (kernels/packed_weights.py, kernels/int8_linear.py), so the results are bitwise
// the eager step's. What goes is the Python around some fifty small ops a step (argument
// parsing, NamedTuples, the Kernels indirection): at batch 1 that is most of the step.
// Autocast (bf16 decoding) applies as in eager: every call goes through the dispatcher,
// whose thread-local autocast state the caller set.
//
// Built once per source hash and torch version by kernels/step_extension.py.

#include <torch/extension.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int64_t kInt8LargeRows = 16;  // int8_linear.LARGE_ROWS

// A linear layer as PackedWeights.linear runs it: oneDNN-packed weight, int8 packings, or
// plain F.linear (a decoding call without packed weights never gets here).
class Linear {
 public:
  // kind: "packed" (weight = the packed copy, bias in its dtype), "int8" (small, large
  // engine packings), "plain" (F.linear(weight, bias)).
  Linear(std::string kind, OptTensor weight, OptTensor bias, py::object small, py::object large)
      : kind_(std::move(kind)), weight_(std::move(weight)), bias_(std::move(bias)) {
    if (kind_ == "int8") {
      small_ = torch::jit::toIValue(small, c10::AnyType::get());
      large_ = torch::jit::toIValue(large, c10::AnyType::get());
    } else if (kind_ != "packed" && kind_ != "plain") {
      throw std::invalid_argument("linear kind must be packed, int8 or plain, not " + kind_);
    }
  }

  // x (..., in) -> (..., out)
  Tensor operator()(const Tensor& x) const {
    if (kind_ == "plain") return at::linear(x, *weight_, bias_);
    auto lead = x.sizes().vec();
    lead.pop_back();
    if (kind_ == "packed") {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                           .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&,
                                         c10::string_view, c10::List<std::optional<at::Scalar>>,
                                         std::optional<c10::string_view>)>();
      Tensor rows = x.to(weight_->scalar_type()).reshape({-1, x.size(-1)}).contiguous();
      Tensor out =
          op.call(rows, *weight_, bias_, "none", c10::List<std::optional<at::Scalar>>(), "");
      lead.push_back(out.size(-1));
      return out.view(lead);
    }
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_dynamic", "");
    Tensor rows = x.dim() == 2 ? x : x.reshape({-1, x.size(-1)});
    rows = rows.to(at::kFloat).contiguous();
    bool large = rows.size(0) >= kInt8LargeRows;
    torch::jit::Stack stack{rows, large ? large_ : small_, !large};
    op.callBoxed(&stack);
    Tensor out = stack[0].toTensor();
    if (x.dim() == 2) return out;
    lead.push_back(out.size(-1));
    return out.view(lead);
  }

 private:
  std::string kind_;
  OptTensor weight_, bias_;
  c10::IValue small_, large_;
};

struct StepOut {
  Tensor logits;  // (B, V)
  Tensor h;       // (layers, B, H)
  OptTensor c;    // (layers, B, H), LSTM only
  OptTensor att;  // (B, H), input feeding only
  OptTensor probs;  // (B, S), attention only
};

}  // namespace

// The decoder of one model bound to one decoding call's packed weights.
class DecodeStep {
 public:
  DecodeStep(Tensor embedding, bool lstm, bool input_feeding, std::string attention,
             std::vector<Linear> ih, std::vector<Linear> hh, std::optional<Linear> query,
             OptTensor energy, std::optional<Linear> combine, Linear output,
             int64_t energy_chunk)
      : embedding_(std::move(embedding)), lstm_(lstm), input_feeding_(input_feeding),
        attention_(std::move(attention)), ih_(std::move(ih)), hh_(std::move(hh)),
        query_(std::move(query)), energy_(std::move(energy)), combine_(std::move(combine)),
        output_(std::move(output)), energy_chunk_(energy_chunk) {}

  // tokens (B,), h (layers, B, H), c for LSTM, att (B, H) with input feeding; memory:
  // outputs (B', S, K), proj_keys (B', S, A), mask (B', S) with B a multiple of B'.
  std::tuple<Tensor, Tensor, OptTensor, OptTensor, OptTensor> step(
      const Tensor& tokens, const Tensor& h, const OptTensor& c, const OptTensor& att,
      const Tensor& outputs, const OptTensor& proj_keys, const Tensor& mask) const {
    StepOut o = run(tokens, h, c, att, outputs, proj_keys, padding(mask));
    return {o.logits, o.h, o.c, o.att, o.probs};
  }

  // Greedy decoding of one batch from its initial state: the step, the argmax, the stop
  // rule and the dropping of finished rows of decoding/greedy.py's _eager_steps, all steps
  // in one call. limits (B,) int64 -> tokens (B, T_out) int64, probs (B, T_out, S) or None.
  std::tuple<Tensor, OptTensor> greedy(Tensor h, OptTensor c, OptTensor att, Tensor outputs,
                                       OptTensor proj_keys, const Tensor& mask, Tensor limits,
                                       int64_t first_limit, int64_t max_limit, int64_t bos,
                                       int64_t eos, int64_t drop_finished_at) const {
    const int64_t batch = h.size(1);
    auto long_opts = at::TensorOptions().dtype(at::kLong).device(h.device());
    Tensor tokens = at::full({batch}, bos, long_opts);
    Tensor finished = at::zeros({batch}, long_opts.dtype(at::kBool));
    Tensor rows = at::arange(batch, long_opts);
    Tensor out = at::full({batch, max_limit}, eos, long_opts);
    OptTensor out_probs;
    int64_t steps = max_limit;
    Tensor pad = padding(mask);  // once per batch: the eager step makes it every step
    for (int64_t t = 0; t < max_limit; ++t) {
      StepOut o = run(tokens, h, c, att, outputs, proj_keys, pad);
      h = o.h, c = o.c, att = o.att;
      tokens = std::get<1>(o.logits.to(at::kFloat).max(-1));
      out.select(1, t).index_copy_(0, rows, tokens);
      if (o.probs) {
        if (!out_probs) out_probs = o.probs->new_zeros({batch, max_limit, o.probs->size(-1)});
        out_probs->select(1, t).index_copy_(0, rows, *o.probs);
      }
      finished.bitwise_or_(tokens.eq(eos));
      if (t + 1 >= first_limit) finished.bitwise_or_(limits.le(t + 1));
      const int64_t done = finished.sum().item<int64_t>(), live = finished.size(0);
      if (done == live) {
        steps = t + 1;
        break;
      }
      if (done * drop_finished_at >= live) {
        Tensor keep = finished.logical_not().nonzero().squeeze(1);
        h = h.index_select(1, keep);
        if (c) c = c->index_select(1, keep);
        if (att) att = att->index_select(0, keep);
        outputs = outputs.index_select(0, keep);
        if (proj_keys) proj_keys = proj_keys->index_select(0, keep);
        pad = pad.index_select(0, keep);
        tokens = tokens.index_select(0, keep), limits = limits.index_select(0, keep);
        rows = rows.index_select(0, keep), finished = finished.index_select(0, keep);
      }
    }
    OptTensor probs;
    if (out_probs) probs = out_probs->narrow(1, 0, steps);
    return {out.narrow(1, 0, steps), probs};
  }

 private:
  // mask (B', S) True at real tokens -> (B', 1, S) True at padding: what masked_fill takes
  static Tensor padding(const Tensor& mask) { return mask.logical_not().unsqueeze(1); }

  // pad: padding(mask)
  StepOut run(const Tensor& tokens, const Tensor& h, const OptTensor& c, const OptTensor& att,
              const Tensor& outputs, const OptTensor& proj_keys, const Tensor& pad) const {
    Tensor rnn_in = at::embedding(embedding_, tokens);  // (B, E)
    if (input_feeding_) rnn_in = at::cat({rnn_in, *att}, -1);  // (B, E + H)
    std::vector<Tensor> hs, cs;
    for (size_t layer = 0; layer < ih_.size(); ++layer) {
      Tensor gi = ih_[layer](rnn_in), gh = hh_[layer](h[layer]);  // (B, G)
      Tensor h_new;
      if (lstm_) {  // kernels/cells.py lstm_cell(gi + gh, c)
        auto gates = (gi + gh).chunk(4, 1);
        Tensor c_new = at::sigmoid(gates[1]) * (*c)[layer] +
                       at::sigmoid(gates[0]) * at::tanh(gates[2]);
        h_new = at::sigmoid(gates[3]) * at::tanh(c_new);
        cs.push_back(c_new);
      } else {  // kernels/cells.py gru_cell(gi, gh, h)
        auto i = gi.chunk(3, 1), g = gh.chunk(3, 1);
        Tensor r = at::sigmoid(i[0] + g[0]), z = at::sigmoid(i[1] + g[1]);
        Tensor n = at::tanh(i[2] + r * g[2]);
        h_new = n + z * (h[layer] - n);
      }
      hs.push_back(h_new);
      rnn_in = h_new;  // eval mode: no inter-layer dropout
    }
    StepOut o;
    o.h = at::stack(hs);
    if (lstm_) o.c = at::stack(cs);
    Tensor vector = rnn_in;  // (B, H)
    if (attention_ != "none") {
      std::tie(vector, o.probs) = attend(rnn_in.unsqueeze(1), outputs, *proj_keys, pad);
      vector = vector.squeeze(1);
    }
    o.logits = output_(vector);  // (B, V)
    if (input_feeding_) o.att = vector;
    return o;
  }

  // model/decoder.py _attentional for one step: rnn_out (B, 1, H) -> h~ (B, 1, H), probs (B, S)
  std::tuple<Tensor, Tensor> attend(const Tensor& rnn_out, const Tensor& values,
                                    const Tensor& proj_keys, const Tensor& pad) const {
    const int64_t rows = rnn_out.size(0), sentences = values.size(0);
    Tensor query = rnn_out;
    if (rows != sentences) {
      TORCH_CHECK(rows % sentences == 0, rows, " decoder rows do not group over ", sentences,
                  " sources");
      query = rnn_out.view({sentences, rows / sentences, -1});
    }
    Tensor scores;
    if (attention_ == "bahdanau") {
      Tensor q = (*query_)(query);  // (B', T, A)
      Tensor v = energy_->squeeze(0);
      Tensor keys = proj_keys.to(q.scalar_type());
      v = v.to(q.scalar_type());
      scores = additive_scores(q.unsqueeze(2), keys.unsqueeze(1), v);
    } else {
      scores = at::bmm(query, proj_keys.transpose(1, 2));
    }
    scores = scores.masked_fill(pad, -std::numeric_limits<double>::infinity());
    Tensor probs = at::softmax(scores, -1);
    Tensor context = at::bmm(probs, values);
    context = context.view({rows, -1, context.size(-1)});
    probs = probs.view({rows, -1, probs.size(-1)});
    Tensor combined = at::cat({rnn_out, context}, -1);
    return {at::tanh((*combine_)(combined)), probs.select(1, 0)};
  }

  // kernels/additive_scores.py chunked_scores: q (B, T, 1, A), k (B, 1, S, A), v (A,)
  Tensor additive_scores(const Tensor& q, const Tensor& k, const Tensor& v) const {
    const int64_t per_row = q.size(1) * k.size(2) * q.size(3);
    const int64_t rows = std::max<int64_t>(1, energy_chunk_ / per_row);
    Tensor total = v.sum();
    Tensor scores = q.new_empty({q.size(0), q.size(1), k.size(2)});
    for (int64_t start = 0; start < q.size(0); start += rows) {
      const int64_t end = std::min(start + rows, q.size(0));
      Tensor half = at::add(q.slice(0, start, end) * 2.0, k.slice(0, start, end), 2.0);
      half.sigmoid_();
      Tensor part = scores.slice(0, start, end);
      at::matmul_out(part, half, v);
    }
    return scores.mul_(2.0).sub_(total);
  }

  Tensor embedding_;
  bool lstm_, input_feeding_;
  std::string attention_;
  std::vector<Linear> ih_, hh_;
  std::optional<Linear> query_;
  OptTensor energy_;
  std::optional<Linear> combine_;
  Linear output_;
  int64_t energy_chunk_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Linear>(m, "Linear")
      .def(py::init<std::string, OptTensor, OptTensor, py::object, py::object>());
  py::class_<DecodeStep>(m, "DecodeStep")
      .def(py::init<Tensor, bool, bool, std::string, std::vector<Linear>, std::vector<Linear>,
                    std::optional<Linear>, OptTensor, std::optional<Linear>, Linear, int64_t>())
      .def("step", &DecodeStep::step)
      .def("greedy", &DecodeStep::greedy);
}
