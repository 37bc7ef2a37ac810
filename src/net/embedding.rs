//! Token input: the embedding E (V, E) in front of the first layer, by one of the plan's two
//! paths — rows gathered per token, or folded into the first layer's input projection as a
//! (V, G·H) table — forward above backward.

use crate::float::Float;
use crate::kernels::{self, Mat, MatMut};
use crate::net::layer::{self, Dims};
use crate::net::{LayerParams, Workspace};

/// The embedding's place in the parameter slab and its sizes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Embedding {
    /// Offset of `encoder.weight` (V, E).
    pub at: usize,
    pub vocab: usize,
    pub dim: usize,
}

impl Embedding {
    fn row<'a, F>(&self, slab: &'a [F], tok: u32) -> &'a [F] {
        &slab[self.at + tok as usize * self.dim..self.at + (tok as usize + 1) * self.dim]
    }

    /// Gathered path, forward: `ws.input` (T·B, E) = E[token] for every (t, b).
    pub(crate) fn gather<F: Float>(&self, params: &[F], ws: &mut Workspace<F>, n: usize) {
        for (row, &tok) in ws.input.chunks_exact_mut(self.dim).zip(&ws.tokens[..n]) {
            row.copy_from_slice(self.row(params, tok));
        }
    }

    /// Folded path, forward: table (V, G·H) = the first layer's biases + E · W_ihᵀ (the same
    /// sums as the layer's own bias + X · W_ihᵀ, so the two paths agree bit for bit).
    pub(crate) fn fold<F: Float>(&self, d: &Dims, lp: &LayerParams, params: &[F], table: &mut [F]) {
        let gh = d.gh;
        let (b_ih, b_hh) = (&params[lp.b_ih..lp.b_ih + gh], &params[lp.b_hh..lp.b_hh + gh]);
        let table = &mut table[..self.vocab * gh];
        layer::fill_input_bias(d.cell, b_ih, b_hh, table);
        kernels::gemm(
            MatMut::rows(table, self.vocab, gh),
            Mat::rows(&params[self.at..], self.vocab, self.dim),
            Mat::rows(&params[lp.w_ih..], gh, self.dim).t(),
            true,
            d.threads,
        );
    }

    /// Gathered path, backward: dE[token] += its dx row, for every (t, b).
    pub(crate) fn scatter<F: Float>(&self, grads: &mut [F], dx: &[F], tokens: &[u32]) {
        for (row, &tok) in dx.chunks_exact(self.dim).zip(tokens) {
            let at = self.at + tok as usize * self.dim;
            kernels::add_into(&mut grads[at..at + self.dim], row);
        }
    }

    /// Folded path, backward: the first layer's input-side pre-activation gradients scattered
    /// into dtable (V, G·H); then dW_ih += dtableᵀ · E and dE += dtable · W_ih, two small GEMMs.
    pub(crate) fn unfold<F: Float>(
        &self,
        d: &Dims,
        lp: &LayerParams,
        params: &[F],
        grads: &mut [F],
        ws: &mut Workspace<F>,
    ) {
        let (gh, e, n) = (d.gh, self.dim, d.steps * d.b);
        ws.dtable.fill(F::zero());
        let dpre = &ws.layers[0].gates[..n * gh];
        // (With lengths, each step's rows after its last running one count nothing: the time
        // loop left their dpre alone, `layer::live_rows`.) In blocks of columns on the threads.
        let (tokens, lengths) = (&ws.tokens, &ws.lengths);
        let pairs = |sink: &mut dyn FnMut(usize, usize)| {
            for t in 0..d.steps {
                let k0 = t * d.b;
                let live = layer::live_rows(lengths, t, 0, d.b);
                for (k, &tok) in tokens[k0..k0 + live].iter().enumerate() {
                    sink(k0 + k, tok as usize);
                }
            }
        };
        kernels::scatter_add_rows_on(&mut ws.dtable, dpre, gh, n, pairs, d.threads);
        let (g_enc, g_rest) = grads.split_at_mut(lp.w_ih);
        kernels::gemm(
            MatMut::rows(&mut g_rest[..gh * e], gh, e),
            Mat::rows(&ws.dtable, self.vocab, gh).t(),
            Mat::rows(&params[self.at..], self.vocab, e),
            true,
            d.threads,
        );
        kernels::gemm(
            MatMut::rows(&mut g_enc[self.at..], self.vocab, e),
            Mat::rows(&ws.dtable, self.vocab, gh),
            Mat::rows(&params[lp.w_ih..], gh, e),
            true,
            d.threads,
        );
    }
}
