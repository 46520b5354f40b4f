function export_reference(modelPath, imagePath, outPath, varargin)
%EXPORT_REFERENCE  Write a cqd-port parity reference (ref_*.mat) for a MatConvNet model.
%
%   EXPORT_REFERENCE(MODELPATH, IMAGEPATH, OUTPATH) loads the MatConvNet
%   model MODELPATH (a SimpleNN file, old or new format, or a DagNN file
%   saved with saveobj, chain or graph), reads the image IMAGEPATH (one file
%   name, or a cell array of file names for a batch), resizes it to the
%   network's input size with IMRESIZE, subtracts the average image, runs
%   the network forward and backward in test mode with a random projection
%   DZDY at the output, and saves every layer's output, input derivative
%   and parameter derivatives to OUTPATH in the format of cqd-port's
%   ../shared/parity/FORMAT.md.
%
%   What real model files lack is filled in as cqd-port's importer does:
%   the input size comes from meta.inputs, meta.inputSize or
%   meta.normalization.imageSize (in that order; option 'inputSize'
%   otherwise, default 224 x 224), the channels from the first convolution
%   (one-channel networks get grey images), a missing averageImage is 0,
%   and trailing loss layers of any kind (softmaxloss, loss, pdist, custom,
%   any DagNN type named like a loss) are removed, since they need labels.
%   Fields:
%
%     image       the resized raw images (0..255), H x W x 3 x N, single
%     input       image - averageImage (what the network sees)
%     names       1 x L cell, the layer names
%     types       1 x L cell, the SimpleNN layer types (conv, relu, normalize, ...)
%     x           1 x (L+1) cell: x{1} the input, x{i+1} the output of layer i
%                 (res(i+1).x of vl_simplenn)
%     dzdy        the projection used at the output
%     dzdx        1 x (L+1) cell: dzdx{i} the derivative with respect to the
%                 input of layer i (res(i).dzdx)
%     dzdw        1 x L cell: dzdw{i} = res(i).dzdw (a cell {filters, biases}
%                 for convolutions, [] for layers without parameters)
%     provenance  struct: tool, matconvnet (version), lrn ('matconvnet-cpu'
%                 on the CPU, whose LRN uses fast_pow; 'exact' on the GPU,
%                 which uses powf), created (date), network (model file name)
%     notes       1 x L cell: per layer, what makes its backward differ from
%                 a chained comparison (empty when nothing): 'bnorm backward
%                 uses batch statistics' (beta18's vl_simplenn calls
%                 vl_nnbnorm without moments in its backward, even in test
%                 mode) and 'N ReLU inputs within float noise of zero' (their
%                 sign, hence the gradient, may flip between implementations).
%                 A parity runner checks each layer's backward on this
%                 file's own x{i} and dzdx{i+1}, and names these cases.
%     inputs, outputs  (DagNN files) 1 x L cells of the variable names each
%                 layer reads and writes: x{i+1} is the first output of
%                 layer i, dzdx{i} the derivative of its first input.
%
%   Options (name/value pairs):
%     'gpu'                false  Run on the GPU (gpuArray); provenance.lrn = 'exact'.
%     'seed'               0      Seed of the random projection dzdy.
%     'network'            ''     Name stored in provenance.network
%                                 (default: the model's file name).
%     'matconvnetVersion'  ''     Version stored in provenance.matconvnet
%                                 (default: read from MatConvNet's Makefile).
%     'inputSize'          []     [H W] when the file declares no input size.
%
%   Usage, in MATLAB with MatConvNet on the path:
%
%     run <matconvnet>/matlab/vl_setupnn
%     addpath <cqd-port>/parity/matconvnet
%     export_reference('imagenet-vgg-m.mat', 'peppers.png', 'ref_imagenet_vgg_m.mat')
%
%   then, in the cqd-port checkout:
%
%     cqd-port convert-weights imagenet-vgg-m.mat -o vgg-m.pt
%     cqd-port parity --model vgg-m.pt --reference ref_imagenet_vgg_m.mat
%
%   The file is written as MAT v7 (readable by scipy) to a temporary name
%   and renamed when complete, so an interrupted export leaves no partial file.
%
%   Model files: Octave cannot read MAT v7.3 (HDF5) files; write a v7 copy
%   first with `cqd-port v7-copy MODEL.mat -o MODEL_v7.mat`. DagNN files saved
%   by MatConvNet after beta18 carry a 'dilate' field in their dagnn.Conv
%   blocks, which beta18's dagnn.Conv does not have: it is removed before
%   loading when this MatConvNet lacks the property (an error if a layer
%   really dilates).

opts.gpu = false;
opts.seed = 0;
opts.network = '';
opts.matconvnetVersion = '';
opts.inputSize = [];
opts = parseOptions(opts, varargin);

[~, modelName, modelExt] = fileparts(modelPath);
if isempty(opts.network)
  opts.network = [modelName modelExt];
end
if isempty(opts.matconvnetVersion)
  opts.matconvnetVersion = matconvnetVersion();
end

% ---------------------------------------------------------------- the model
stored = load(modelPath);
if isfield(stored, 'net')
  stored = stored.net;   % networks saved by cnn_train* hold the model in 'net'
end
if ~isfield(stored, 'layers')
  % Octave reads no MAT v7.3 (HDF5) file: load returns a struct without layers
  error('export_reference:format', ['%s holds no network (no ''layers''); a MAT v7.3 file under Octave? ' ...
        'Write a v7 copy first: cqd-port v7-copy %s -o copy.mat'], modelPath, modelPath);
end
isDag = isfield(stored, 'vars') && isfield(stored, 'params') && isfield(stored, 'layers');

if isDag
  stored = dropUnitDilate(stored);   % beta18's dagnn.Conv has no 'dilate' property
  net = dagnn.DagNN.loadobj(stored);
  net = removeDagLosses(net);
  meta = net.meta;
  channels = firstDagConvDepth(stored);
else
  stored.layers = removeTrailingLosses(stored.layers);
  net = stored;
  if exist('vl_simplenn_tidy', 'file')
    net = vl_simplenn_tidy(net);   % the pre-beta17 layout -> the current one
  end
  meta = struct();
  if isfield(net, 'meta'), meta = net.meta; end
  if ~isfield(meta, 'normalization') && isfield(stored, 'normalization')
    meta.normalization = stored.normalization;   % pre-beta17 top-level field
  end
  channels = firstConvDepth(net.layers);
end
[imageSize, average] = inputOf(meta, channels, opts.inputSize);

% ---------------------------------------------------------------- the input
[image, input] = readImages(imagePath, imageSize, average);

% ---------------------------------------------------------------- forward and backward
inputs = {};
outputs = {};
if isDag
  [names, types, x, dzdy, dzdx, dzdw, inputs, outputs] = runDag(net, input, opts);
else
  [names, types, x, dzdy, dzdx, dzdw] = runSimpleNN(net, input, opts);
end
notes = backwardNotes(types, x);

% ---------------------------------------------------------------- provenance
if exist('OCTAVE_VERSION', 'builtin')
  host = ['GNU Octave ' OCTAVE_VERSION];
else
  host = ['MATLAB ' version];
end
if opts.gpu
  provenance.tool = ['MatConvNet GPU kernels under ' host ' (export_reference.m)'];
  provenance.lrn = 'exact';
else
  provenance.tool = ['MatConvNet CPU MEX kernels under ' host ' (export_reference.m)'];
  provenance.lrn = 'matconvnet-cpu';
end
provenance.matconvnet = opts.matconvnetVersion;
provenance.created = datestr(now, 'yyyy-mm-dd');
provenance.network = opts.network;

% ---------------------------------------------------------------- save, atomically
tmpPath = [outPath '.partial.mat'];
variables = {'image', 'input', 'names', 'types', 'x', 'dzdy', 'dzdx', 'dzdw', 'provenance', 'notes'};
if isDag
  variables = [variables, {'inputs', 'outputs'}];
end
save(tmpPath, variables{:}, '-v7');
movefile(tmpPath, outPath, 'f');
fprintf('export_reference: wrote %s (%d layers, LRN %s)\n', outPath, numel(names), provenance.lrn);
end


% ====================================================================== helpers

function [image, input] = readImages(imagePath, imageSize, average)
%READIMAGES  Read, resize (imresize, default bicubic) and mean-subtract a batch.
%   IMAGESIZE is [H W C]; C = 1 gives grey images (the luminance of rgb2gray).
if ischar(imagePath)
  imagePath = {imagePath};
end
channels = imageSize(3);
image = zeros(imageSize(1), imageSize(2), channels, numel(imagePath), 'single');
for k = 1:numel(imagePath)
  im = single(imread(imagePath{k}));
  if size(im, 3) > 3
    im = im(:, :, 1:3);         % drop an alpha channel
  end
  if channels == 1 && size(im, 3) == 3
    im = 0.298936021293775 * im(:, :, 1) + 0.587043074451121 * im(:, :, 2) + 0.114020904255103 * im(:, :, 3);
  elseif channels == 3 && size(im, 3) == 1
    im = repmat(im, [1 1 3]);   % grey -> RGB
  elseif size(im, 3) ~= channels
    error('export_reference:channels', 'the network takes %d channels; %s has %d', channels, imagePath{k}, size(im, 3));
  end
  image(:, :, :, k) = imresize(im, imageSize(1:2));
end
input = bsxfun(@minus, image, average);
end


function [imageSize, average] = inputOf(meta, channels, fallback)
%INPUTOF  [H W C] and the average image, as cqd-port's importer reads them.
%   H x W from meta.inputs(1).size, meta.inputSize, meta.normalization.imageSize
%   (the first present), else FALLBACK, else 224 x 224; C from the first
%   convolution's filter depth, else the declared size, else 3.
declared = [];
if isfield(meta, 'inputs') && ~isempty(meta.inputs) && isfield(meta.inputs(1), 'size') && numel(meta.inputs(1).size) >= 2
  declared = double(meta.inputs(1).size);
elseif isfield(meta, 'inputSize') && numel(meta.inputSize) >= 2
  declared = double(meta.inputSize);
elseif isfield(meta, 'normalization') && isfield(meta.normalization, 'imageSize') && numel(meta.normalization.imageSize) >= 2
  declared = double(meta.normalization.imageSize);
end
if isempty(declared)
  declared = fallback;
end
if isempty(declared)
  declared = [224 224];
end
if isempty(channels)
  if numel(declared) >= 3, channels = declared(3); else, channels = 3; end
end
imageSize = [declared(1) declared(2) channels];
average = single(0);
if isfield(meta, 'normalization') && isfield(meta.normalization, 'averageImage') && ~isempty(meta.normalization.averageImage)
  average = single(meta.normalization.averageImage);
  if isvector(average) && numel(average) == channels
    average = reshape(average, 1, 1, channels);   % a mean colour, as in VGG-VD-16
  end
end
end


function stored = dropUnitDilate(stored)
%DROPUNITDILATE  Remove the 'dilate' field of dagnn.Conv blocks when this MatConvNet's dagnn.Conv
%   has no such property (1.0-beta18: loadobj would fail on files saved by later versions).
%   A dilation other than 1 cannot run there: an error.
if any(strcmp(properties('dagnn.Conv'), 'dilate'))
  return;
end
for i = 1:numel(stored.layers)
  block = stored.layers(i).block;
  if strcmp(stored.layers(i).type, 'dagnn.Conv') && isstruct(block) && isfield(block, 'dilate')
    if any(block.dilate(:) ~= 1)
      error('export_reference:dilate', 'layer %s has dilate %s, which this MatConvNet (beta18) cannot run', ...
            stored.layers(i).name, mat2str(block.dilate));
    end
    stored.layers(i).block = rmfield(block, 'dilate');
  end
end
end


function d = firstConvDepth(layers)
%FIRSTCONVDEPTH  The filter depth of the first convolution ([] if none).
d = [];
for i = 1:numel(layers)
  l = layers{i};
  if strcmp(l.type, 'conv')
    if isfield(l, 'weights'), f = l.weights{1}; else, f = l.filters; end
    d = size(f, 3);
    return;
  end
end
end


function d = firstDagConvDepth(stored)
%FIRSTDAGCONVDEPTH  The filter depth of the first dagnn.Conv of a saveobj struct ([] if none).
d = [];
for i = 1:numel(stored.layers)
  if strcmp(stored.layers(i).type, 'dagnn.Conv')
    name = stored.layers(i).params{1};
    for p = 1:numel(stored.params)
      if strcmp(stored.params(p).name, name)
        d = size(stored.params(p).value, 3);
        return;
      end
    end
  end
end
end


function yes = isLossType(type)
%ISLOSSTYPE  A layer type that ends a training network (cqd-port's importer uses the same rule).
parts = strsplit(type, '.');
short = lower(parts{end});
yes = any(strcmp(short, {'softmaxloss', 'loss', 'pdist', 'custom'})) || ~isempty(strfind(short, 'loss'));
end


function layers = removeTrailingLosses(layers)
%REMOVETRAILINGLOSSES  Drop SimpleNN loss layers at the end (they need labels).
while ~isempty(layers) && isLossType(layers{end}.type)
  layers = layers(1:end - 1);
end
end


function net = removeDagLosses(net)
%REMOVEDAGLOSSES  Remove DagNN loss layers whose outputs no layer reads.
changed = true;
while changed
  changed = false;
  for i = numel(net.layers):-1:1
    layer = net.layers(i);
    if isLossType(class(layer.block))
      read = false;
      for j = 1:numel(net.layers)
        read = read || any(ismember(layer.outputs, net.layers(j).inputs));
      end
      if ~read
        net.removeLayer(layer.name);
        changed = true;
        break;
      end
    end
  end
end
end


function notes = backwardNotes(types, x)
%BACKWARDNOTES  Per layer, why its backward may differ from a chained comparison.
notes = cell(1, numel(types));
for i = 1:numel(types)
  notes{i} = '';
  if strcmp(types{i}, 'bnorm')   % vl_simplenn and dagnn.BatchNorm of beta18 alike
    notes{i} = 'bnorm backward uses batch statistics';
  elseif strcmp(types{i}, 'relu') && ~isempty(x{i})
    v = double(x{i}(:));
    noise = 1e-6 * max(abs(v));
    count = sum(abs(v) <= noise & v ~= 0);
    if count > 0
      notes{i} = sprintf('%d ReLU inputs within float noise of zero', count);
    end
  end
end
end


function opts = parseOptions(opts, args)
%PARSEOPTIONS  vl_argparse when MatConvNet is on the path, else plain name/value pairs.
if exist('vl_argparse', 'file')
  opts = vl_argparse(opts, args);
  return;
end
for k = 1:2:numel(args)
  if ~isfield(opts, args{k})
    error('export_reference:option', 'unknown option %s', args{k});
  end
  opts.(args{k}) = args{k + 1};
end
end


function [names, types, x, dzdy, dzdx, dzdw] = runSimpleNN(net, input, opts)
%RUNSIMPLENN  res = vl_simplenn(net, input, dzdy) in test mode, layer by layer.
if opts.gpu
  net = vl_simplenn_move(net, 'gpu');
  input = gpuArray(input);
end
res = vl_simplenn(net, input, [], [], 'mode', 'test');
dzdy = projection(res(end).x, opts.seed);
if opts.gpu
  dzdy = gpuArray(dzdy);
end
res = vl_simplenn(net, input, dzdy, [], 'mode', 'test');

n = numel(net.layers);
names = cell(1, n);
types = cell(1, n);
x = cell(1, n + 1);
dzdx = cell(1, n + 1);
dzdw = cell(1, n);
for i = 1:n
  layer = net.layers{i};
  if isfield(layer, 'name') && ~isempty(layer.name)
    names{i} = layer.name;
  else
    names{i} = sprintf('layer%d', i);
  end
  types{i} = layer.type;
  if isfield(res(i), 'dzdw') && ~isempty(res(i).dzdw)
    dzdw{i} = cellfun(@toHost, res(i).dzdw, 'UniformOutput', false);
  else
    dzdw{i} = [];
  end
end
for i = 1:n + 1
  x{i} = toHost(res(i).x);
  dzdx{i} = toHost(res(i).dzdx);
end
dzdy = toHost(dzdy);
end


function [names, types, x, dzdy, dzdx, dzdw, inputs, outputs] = runDag(net, input, opts)
%RUNDAG  The same quantities from a DagNN, chain or graph, in its execution order.
%   x{1} is the network input; x{k+1} the first output of the k-th layer
%   run; dzdx{k} the derivative of its first input; INPUTS/OUTPUTS name
%   the variables each layer reads and writes.
net.mode = 'test';
net.conserveMemory = false;   % keep every variable and its derivative
if opts.gpu
  net.move('gpu');
  input = gpuArray(input);
end
order = net.getLayerExecutionOrder();
n = numel(order);
inputName = net.getInputs();
inputName = inputName{1};
outputName = net.getOutputs();
outputName = outputName{1};

net.eval({inputName, input});
dzdy = projection(net.vars(net.getVarIndex(outputName)).value, opts.seed);
if opts.gpu
  dzdy = gpuArray(dzdy);
end
net.eval({inputName, input}, {outputName, dzdy});

names = cell(1, n);
types = cell(1, n);
inputs = cell(1, n);
outputs = cell(1, n);
x = cell(1, n + 1);
dzdx = cell(1, n + 1);
dzdw = cell(1, n);
x{1} = toHost(net.vars(net.getVarIndex(inputName)).value);
for k = 1:n
  layer = net.layers(order(k));
  names{k} = layer.name;
  types{k} = dagType(layer.block);
  inputs{k} = layer.inputs;
  outputs{k} = layer.outputs;
  x{k + 1} = toHost(net.vars(layer.outputIndexes(1)).value);
  dzdx{k} = toHost(net.vars(layer.inputIndexes(1)).der);
  if isempty(layer.paramIndexes)
    dzdw{k} = [];
  else
    dzdw{k} = arrayfun(@(p) toHost(net.params(p).der), layer.paramIndexes, 'UniformOutput', false);
  end
end
dzdx{n + 1} = toHost(dzdy);
dzdy = toHost(dzdy);
end


function dzdy = projection(output, seed)
%PROJECTION  A seeded random projection at the output (1 for a scalar loss output).
if numel(output) == 1
  dzdy = single(1);
  return;
end
rng(seed);
dzdy = randn(size(output), 'single');
end


function a = toHost(a)
%TOHOST  gather() for gpuArrays; other arrays unchanged (Octave has no gather).
if isa(a, 'gpuArray')
  a = gather(a);
end
end


function t = dagType(block)
%DAGTYPE  The SimpleNN type name of a DagNN block.
switch class(block)
  case 'dagnn.Conv',      t = 'conv';
  case 'dagnn.ReLU',      t = 'relu';
  case 'dagnn.LRN',       t = 'normalize';
  case 'dagnn.Pooling',   t = 'pool';
  case 'dagnn.SoftMax',   t = 'softmax';
  case 'dagnn.DropOut',   t = 'dropout';
  case 'dagnn.BatchNorm', t = 'bnorm';
  case 'dagnn.ConvTranspose', t = 'convt';
  case 'dagnn.Sum',       t = 'sum';
  case 'dagnn.Concat',    t = 'concat';
  case 'dagnn.Crop',      t = 'crop';
  case 'dagnn.Scale',     t = 'scale';
  otherwise,              t = class(block);
end
end


function v = matconvnetVersion()
%MATCONVNETVERSION  The VER line of MatConvNet's Makefile ('unknown' if not found).
v = 'unknown';
setup = which('vl_setupnn');
if isempty(setup)
  return;
end
makefile = fullfile(fileparts(fileparts(setup)), 'Makefile');
if ~exist(makefile, 'file')
  return;
end
contents = fileread(makefile);
tokens = regexp(contents, 'VER\s*=\s*(\S+)', 'tokens', 'once');
if ~isempty(tokens)
  v = tokens{1};
end
end
