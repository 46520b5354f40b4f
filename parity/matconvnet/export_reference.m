function export_reference(modelPath, imagePath, outPath, varargin)
%EXPORT_REFERENCE  Write a cqd-port parity reference (ref_*.mat) for a MatConvNet model.
%
%   EXPORT_REFERENCE(MODELPATH, IMAGEPATH, OUTPATH) loads the MatConvNet
%   model MODELPATH (a SimpleNN file, old or new format, or a DagNN file
%   saved with saveobj), reads the image IMAGEPATH (one file name, or a
%   cell array of file names for a batch), resizes it to
%   meta.normalization.imageSize with IMRESIZE, subtracts
%   meta.normalization.averageImage, runs the network forward and backward
%   in test mode with a random projection DZDY at the output, and saves
%   every layer's output, input derivative and parameter derivatives to
%   OUTPATH in the format of cqd-port's ../shared/parity/FORMAT.md:
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
%
%   Options (name/value pairs):
%     'gpu'                false  Run on the GPU (gpuArray); provenance.lrn = 'exact'.
%     'seed'               0      Seed of the random projection dzdy.
%     'network'            ''     Name stored in provenance.network
%                                 (default: the model's file name).
%     'matconvnetVersion'  ''     Version stored in provenance.matconvnet
%                                 (default: read from MatConvNet's Makefile).
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

opts.gpu = false;
opts.seed = 0;
opts.network = '';
opts.matconvnetVersion = '';
opts = vl_argparse(opts, varargin);

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
isDag = isfield(stored, 'vars') && isfield(stored, 'params') && isfield(stored, 'layers');

if isDag
  net = dagnn.DagNN.loadobj(stored);
  normalization = net.meta.normalization;
else
  net = stored;
  if exist('vl_simplenn_tidy', 'file')
    net = vl_simplenn_tidy(net);   % the pre-beta17 layout -> the current one
  end
  if isfield(net, 'meta') && isfield(net.meta, 'normalization')
    normalization = net.meta.normalization;
  else
    normalization = net.normalization;
  end
end

% ---------------------------------------------------------------- the input
[image, input] = readImages(imagePath, normalization);

% ---------------------------------------------------------------- forward and backward
if isDag
  [names, types, x, dzdy, dzdx, dzdw] = runDag(net, input, opts);
else
  [names, types, x, dzdy, dzdx, dzdw] = runSimpleNN(net, input, opts);
end

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
save(tmpPath, 'image', 'input', 'names', 'types', 'x', 'dzdy', 'dzdx', 'dzdw', 'provenance', '-v7');
movefile(tmpPath, outPath, 'f');
fprintf('export_reference: wrote %s (%d layers, LRN %s)\n', outPath, numel(names), provenance.lrn);
end


% ====================================================================== helpers

function [image, input] = readImages(imagePath, normalization)
%READIMAGES  Read, resize (imresize, default bicubic) and mean-subtract a batch.
if ischar(imagePath)
  imagePath = {imagePath};
end
imageSize = normalization.imageSize(1:2);
average = single(normalization.averageImage);
if isvector(average) && numel(average) == 3
  average = reshape(average, 1, 1, 3);   % a mean colour, as in VGG-VD-16
end
image = zeros(imageSize(1), imageSize(2), 3, numel(imagePath), 'single');
for k = 1:numel(imagePath)
  im = single(imread(imagePath{k}));
  if size(im, 3) == 1
    im = repmat(im, [1 1 3]);   % grey -> RGB
  elseif size(im, 3) > 3
    im = im(:, :, 1:3);         % drop an alpha channel
  end
  image(:, :, :, k) = imresize(im, imageSize);
end
input = bsxfun(@minus, image, average);
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


function [names, types, x, dzdy, dzdx, dzdw] = runDag(net, input, opts)
%RUNDAG  The same quantities from a DagNN that is a chain (one input, one output per layer).
net.mode = 'test';
net.conserveMemory = false;   % keep every variable and its derivative
if opts.gpu
  net.move('gpu');
  input = gpuArray(input);
end
order = net.getLayerExecutionOrder();
n = numel(order);
for k = 1:n
  layer = net.layers(order(k));
  if numel(layer.inputIndexes) ~= 1 || numel(layer.outputIndexes) ~= 1 || ...
      (k > 1 && layer.inputIndexes(1) ~= net.layers(order(k - 1)).outputIndexes(1))
    error('export_reference:notChain', ...
      'layer %s is not part of a simple chain; export_reference only handles chain networks', layer.name);
  end
end
inputName = net.vars(net.layers(order(1)).inputIndexes(1)).name;
outputName = net.vars(net.layers(order(n)).outputIndexes(1)).name;

net.eval({inputName, input});
dzdy = projection(net.vars(net.getVarIndex(outputName)).value, opts.seed);
if opts.gpu
  dzdy = gpuArray(dzdy);
end
net.eval({inputName, input}, {outputName, dzdy});

names = cell(1, n);
types = cell(1, n);
x = cell(1, n + 1);
dzdx = cell(1, n + 1);
dzdw = cell(1, n);
x{1} = toHost(net.vars(net.layers(order(1)).inputIndexes(1)).value);
for k = 1:n
  layer = net.layers(order(k));
  names{k} = layer.name;
  types{k} = dagType(layer.block);
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
